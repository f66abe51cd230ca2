"""One file per method; importing this package registers them all."""

from unlearn.methods import (  # noqa: F401
    bad_teacher,
    boundary_expand,
    boundary_shrink,
    cf_k,
    eu_k,
    fisher,
    ft,
    ga,
    influence,
    l1_sparse,
    neggrad_plus,
    retrain,
    rl,
    scrub,
    ssd,
)
