"""One file per method; importing this package registers them all."""

from unlearn.methods import bad_teacher, ft, ga, l1_sparse, neggrad_plus, rl, scrub  # noqa: F401
