"""torch.nn.functional-style encrypted ops: the approximate softmax and the fused cross-entropy."""

from ..approx.softmax import SoftmaxConfig
from .cross_entropy import CrossEntropyOutput, cross_entropy
from .key_owner_softmax import KeyOwnerLoss, key_owner_cross_entropy
from .plan import SoftmaxPlan, plan_softmax
from .softmax import RefreshPolicy, softmax, softmax_rotation_steps

__all__ = ["CrossEntropyOutput", "KeyOwnerLoss", "RefreshPolicy", "SoftmaxConfig", "SoftmaxPlan", "cross_entropy",
           "key_owner_cross_entropy", "plan_softmax", "softmax", "softmax_rotation_steps"]
