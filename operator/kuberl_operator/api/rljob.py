"""The RLJob resource: identity constants, object metadata, and the top-level model."""

from __future__ import annotations

import re
from typing import Final, Literal

from pydantic import ConfigDict, Field

from kuberl_operator.api.rules import ApiModel, Rule
from kuberl_operator.api.spec import RLJobSpec
from kuberl_operator.api.status import RLJobStatus

GROUP: Final = "kuberl.io"
VERSION: Final = "v1alpha1"
API_VERSION: Final = f"{GROUP}/{VERSION}"
KIND: Final = "RLJob"
PLURAL: Final = "rljobs"
SINGULAR: Final = "rljob"
SHORT_NAMES: Final = ("rlj",)
CRD_NAME: Final = f"{PLURAL}.{GROUP}"

# Child pods and services are named `<job>-<role>-<index>`, and a Service name must be a DNS-1035 label
# (at most 63 characters, starting with a letter): 40 leaves room for the longest suffix.
MAX_NAME_LENGTH: Final = 40
NAME_PATTERN: Final = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
_NAME_MESSAGE: Final = (
    f"must be a DNS-1035 label (lowercase letters, digits and '-', starting with a letter) "
    f"of at most {MAX_NAME_LENGTH} characters: pods and services are named after it"
)


class ObjectMeta(ApiModel):
    """The parts of Kubernetes object metadata a user writes; server-set fields are kept as they are."""

    model_config = ConfigDict(extra="allow")

    name: str = Field(min_length=1, max_length=253)
    """Job name, unique in its namespace."""
    namespace: str | None = None
    """Namespace; defaults to the one kubectl uses."""
    labels: dict[str, str] | None = None
    """Labels, copied to every pod of the job."""
    annotations: dict[str, str] | None = None
    """Annotations."""


class RLJob(ApiModel):
    """An RL post-training job: a controller pod, a trainer gang and an elastic vLLM rollout pool."""

    apiVersion: Literal["kuberl.io/v1alpha1"]
    """`kuberl.io/v1alpha1`."""
    kind: Literal["RLJob"]
    """`RLJob`."""
    metadata: ObjectMeta
    """Standard object metadata."""
    spec: RLJobSpec
    """Desired state."""
    status: RLJobStatus | None = None
    """Observed state, written by the operator."""

    rules = (
        Rule(
            cel=f"self.metadata.name.size() <= {MAX_NAME_LENGTH} && self.metadata.name.matches('{NAME_PATTERN}')",
            message=_NAME_MESSAGE,
            field="metadata.name",
            cel_field_path=False,
            check=lambda m: (
                None
                if len(m.metadata.name) <= MAX_NAME_LENGTH and re.match(NAME_PATTERN, m.metadata.name)
                else _NAME_MESSAGE
            ),
        ),
    )
