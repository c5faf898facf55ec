"""Machine-readable output of GRASS modules, on every supported version.

GRASS 8.5 gave r.univar, r.info, i.group and g.proj a format= option
(json, shell) and marked their older shell-style flags (-g, -w) deprecated;
8.2 to 8.4 have only the flags. A module's own interface description says
which it has, so the choice follows the installed GRASS, not its version
number.
"""

import functools
import json

import grass.script as gs
from grass.script import task as gtask


@functools.lru_cache(maxsize=None)
def output_formats(module):
    """The values of `module`'s format= option, or () where it has none."""
    parameter = gtask.parse_interface(module).get_param("format", raiseError=False)
    return tuple(parameter.get("values") or ()) if parameter else ()


def key_values(module, flags="", shell_flag="", **options):
    """`module`'s results as {key: value}: format=json where the module has it
    (numbers as numbers, no value as None), else its shell-style output
    (with `shell_flag`, every value a string)."""
    if "json" in output_formats(module):
        return json.loads(
            gs.read_command(module, flags=flags, format="json", **options)
        )
    return gs.parse_command(module, flags=flags + shell_flag, **options)


def group_members(group):
    """The raster maps of an imagery group, as i.group lists them."""
    if "json" in output_formats("i.group"):
        return json.loads(gs.read_command("i.group", group=group, format="json"))
    return gs.read_command("i.group", group=group, flags="g").split()


def metres_per_unit():
    """The current project's map unit in metres (g.proj's `meters`)."""
    if "shell" in output_formats("g.proj"):
        info = gs.parse_command("g.proj", flags="p", format="shell")
    else:
        info = gs.parse_command("g.proj", flags="g")
    return float(info.get("meters", 1.0))


def projection_wkt():
    """The current project's CRS as WKT on one line."""
    if "wkt" in output_formats("g.proj"):
        return gs.read_command("g.proj", flags="pf", format="wkt").strip()
    return gs.read_command("g.proj", flags="wf").strip()
