"""The classified map as a vector map of areas, for users who need polygons.

r.to.vect turns the map's patches of equal class into areas with the class
value and label as attributes; v.clean's rmarea then merges areas smaller
than a minimum area into the neighbour with which they share the longest
boundary (what r.reclass.area does, without its round trip to a raster).
Areas are computed by GRASS in square metres, on the ellipsoid in a
latitude-longitude project.
"""

import grass.script as gs

from iann.errors import IannError
from iann.grass.temporary import temporary_map_name


def check_new_vector(name, overwrite):
    """Refuse an existing vector map of the current mapset without overwrite."""
    if not name or overwrite:
        return
    if gs.find_file(name, element="vector", mapset=gs.gisenv()["MAPSET"])["fullname"]:
        raise IannError(
            _("Vector map <{}> exists; use --overwrite to replace it").format(name)
        )


def write_vector(classes, output, min_area, smooth, temporary_vectors):
    """Vectorise the class map `classes` into `output` (areas).

    Temporary vector maps go to `temporary_vectors` first, so the caller
    removes them whatever happens; `output` is written last, in one rename.
    """

    def into_temporary(module, purpose, **options):
        name = temporary_map_name(purpose)
        temporary_vectors.append(name)
        gs.run_command(module, output=name, quiet=True, overwrite=True, **options)
        return name

    final = into_temporary(
        "r.to.vect",
        "areas",
        input=classes,
        type="area",
        column="value",
        flags="s" if smooth else "",
    )
    if min_area:
        cleaned = into_temporary(
            "v.clean", "cleaned", input=final, tool="rmarea", threshold=min_area
        )
        # v.clean keeps the attribute rows of the areas it merged away;
        # v.extract copies only the rows of the areas left.
        final = into_temporary("v.extract", "kept", input=cleaned, type="area")
    gs.run_command("g.rename", vector=(final, output), overwrite=True, quiet=True)
    temporary_vectors.remove(final)
    gs.vector_history(output)
    return output
