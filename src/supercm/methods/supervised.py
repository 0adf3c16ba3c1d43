"""Cross-entropy on the labeled batch alone: no unlabeled loss."""

from .base import SSLMethod, register


@register("supervised")
class Supervised(SSLMethod):
    """The CE baseline. With SuperCM (β > 0) the CM loss still uses the unlabeled batch."""
