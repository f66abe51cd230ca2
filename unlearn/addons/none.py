"""none: the method as published, d = g_U + g_C."""

from dataclasses import dataclass

from unlearn import register_addon
from unlearn.addons.common import Addon


@register_addon("none")
@dataclass
class NoAddon(Addon):
    needs = ()

    def direction(self, g_u, g_c, g_obj):
        return g_obj, None
