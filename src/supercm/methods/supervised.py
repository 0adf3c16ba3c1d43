"""Cross-entropy on the labeled batch alone: no unlabeled loss."""

from .base import Term, register


@register("supervised")
class Supervised(Term):
    """The CE baseline. With SuperCM (β > 0) the CM loss still uses the unlabeled batch."""
