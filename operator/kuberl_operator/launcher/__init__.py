"""The local launcher: `kuberl run` runs an RLJob as local processes, with the operator's fault policy."""
