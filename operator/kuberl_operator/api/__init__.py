"""The RLJob API (kuberl.io/v1alpha1): pydantic models, the generated CRD, validation and documentation."""

from kuberl_operator.api.rljob import API_VERSION, GROUP, KIND, PLURAL, VERSION, RLJob
from kuberl_operator.api.spec import RLJobSpec
from kuberl_operator.api.status import Condition, RLJobStatus, RoleStatus

__all__ = [
    "API_VERSION",
    "GROUP",
    "KIND",
    "PLURAL",
    "VERSION",
    "Condition",
    "RLJob",
    "RLJobSpec",
    "RLJobStatus",
    "RoleStatus",
]
