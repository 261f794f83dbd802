"""Models kuberl builds itself (no download)."""
