"""kuberl's operator side: the RLJob API, the kopf operator, the local launcher and the `kuberl` CLI."""

__version__ = "0.1.0"
