"""One file per add-on; importing this package registers them all."""

from unlearn.addons import mask, none, salun, vargrad  # noqa: F401
