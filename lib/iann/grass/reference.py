"""Reference classes kept as vector maps: points, lines or areas.

Analysts digitise training polygons and collect field points rather than
keep a wall-to-wall class raster. A vector reference is rasterised on the
current region's grid by v.to.rast into a temporary integer map (removed
by the caller), with the attribute column as class value and an optional
label column as the classes' names; from there on it is read as a raster
reference is.
"""

from dataclasses import dataclass

import grass.script as gs

from iann.errors import IannError
from iann.grass.rasters import read_categories, split_name
from iann.grass.temporary import temporary_map_name

INTEGER_TYPES = ("INTEGER", "SMALLINT", "BIGINT", "INT", "INT4", "INT8")


@dataclass
class VectorReference:
    """A vector reference and where its classes are."""

    name: str
    column: str
    label_column: str = ""
    layer: str = "1"

    def provenance(self):
        """What the dataset's or report's metadata says of the reference."""
        return {
            "vector": self.name,
            "column": self.column,
            "label_column": self.label_column or None,
            "layer": self.layer,
        }


def find_vector(name):
    """Full name (map@mapset) of a vector map, or an error naming it."""
    base, mapset = split_name(name)
    found = gs.find_file(base, element="vector", mapset=mapset)["fullname"]
    if not found:
        raise IannError(
            _(
                "Vector map <{}> not found in project <{}>; a map of another "
                "project must be imported first (v.import or v.proj)"
            ).format(name, gs.gisenv()["LOCATION_NAME"])
        )
    return found


def check_vector_reference(names, column, label_column="", layer="1"):
    """The vector reference, once its maps and columns are checked.

    `names` is one map or several, comma-separated (the points of a first
    campaign and the batches labelled since): each must have the columns
    and some class values.
    """
    checked = [
        check_one_map(name, column, label_column, layer)
        for name in names.split(",")
        if name
    ]
    first = checked[0]
    return VectorReference(
        ",".join(reference.name for reference in checked),
        first.column,
        first.label_column,
        first.layer,
    )


def check_one_map(name, column, label_column, layer):
    name = find_vector(name)
    connections = gs.vector_db(name)
    try:
        connection = connections.get(int(layer))
    except ValueError:
        connection = next(
            (c for c in connections.values() if c.get("name") == layer), None
        )
    if connection is None:
        raise IannError(
            _(
                "Vector map <{}> has no attribute table in layer {}; class "
                "values are read from column <{}> of that table"
            ).format(name, layer, column)
        )
    columns = gs.vector_columns(name, layer=layer)
    types = {key.lower(): (key, value["type"]) for key, value in columns.items()}
    if column.lower() not in types:
        raise IannError(
            _("Vector map <{}> has no column <{}> (columns: {})").format(
                name, column, ", ".join(columns)
            )
        )
    column, kind = types[column.lower()]
    if kind.upper() not in INTEGER_TYPES:
        raise IannError(
            _(
                "Column <{}> of vector map <{}> is of type {}, not integer: "
                "class values must be integers"
            ).format(column, name, kind)
        )
    if label_column:
        if label_column.lower() not in types:
            raise IannError(
                _("Vector map <{}> has no label column <{}>").format(name, label_column)
            )
        label_column = types[label_column.lower()][0]
    reference = VectorReference(name, column, label_column, str(layer))
    # Cheap (one COUNT in the table), so that a reference without any class
    # value is refused before a classification, not after it.
    counted = gs.read_command(
        "db.select",
        flags="c",
        sql="SELECT COUNT(*) FROM {} WHERE {} IS NOT NULL".format(
            connection["table"], column
        ),
        database=connection["database"],
        driver=connection["driver"],
    ).split()
    if counted and counted[0] == "0":
        raise no_features(reference)
    return reference


def rasterise(reference, temporary_maps):
    """Rasterise a vector reference on the region's grid: the map to read.

    Points and lines mark the cells they fall in or cross, areas the cells
    whose centre they contain; where features overlap, the last one wins,
    and where the maps of a reference of several overlap, the first map.
    The temporary maps' names are appended to `temporary_maps` first, so
    the caller removes them even when v.to.rast fails part-way.
    """
    names = reference.name.split(",")
    if len(names) == 1:
        return rasterise_map(reference, temporary_maps)
    parts = [
        rasterise_map(
            VectorReference(
                name, reference.column, reference.label_column, reference.layer
            ),
            temporary_maps,
        )
        for name in names
    ]
    output = temporary_map_name("references")
    temporary_maps.append(output)
    gs.run_command("r.patch", input=parts, output=output, quiet=True, overwrite=True)
    # Each map's labels of the values it has (v.to.rast may label a range
    # of values, 1-3 for the values 1 and 3 of one name); the first map's
    # where several label a value.
    labels = {}
    for part in reversed(parts):
        present = {
            int(v) for v in gs.read_command("r.stats", flags="n", input=part).split()
        }
        labels.update(
            {k: v for k, v in read_categories(part).items() if v and k in present}
        )
    if labels:
        gs.write_command(
            "r.category",
            map=output,
            rules="-",
            separator="pipe",
            stdin="".join("{}|{}\n".format(k, v) for k, v in sorted(labels.items())),
        )
    return output + "@" + gs.gisenv()["MAPSET"]


def rasterise_map(reference, temporary_maps):
    """Rasterise the one map of `reference` (see rasterise)."""
    output = temporary_map_name("reference_{}".format(len(temporary_maps)))
    temporary_maps.append(output)
    options = {"label_column": reference.label_column} if reference.label_column else {}
    # Only the feature types the map has: v.to.rast warns of each one missing
    # ("No areas selected" for a map of points).
    topology = gs.vector_info_topo(reference.name)
    types = [
        kind
        for kind, key in (("point", "points"), ("line", "lines"), ("area", "areas"))
        if topology.get(key)
    ]
    if not types:
        raise no_features(reference)
    try:
        gs.run_command(
            "v.to.rast",
            input=reference.name,
            layer=reference.layer,
            type=",".join(types),
            use="attr",
            attribute_column=reference.column,
            output=output,
            memory=300,
            quiet=True,
            overwrite=True,
            **options,
        )
    except gs.CalledModuleError:
        raise IannError(
            _("Rasterising vector map <{}> (column <{}>) with v.to.rast failed").format(
                reference.name, reference.column
            )
        )
    if gs.raster_info(output)["max"] is None:
        raise no_features(reference)
    return output + "@" + gs.gisenv()["MAPSET"]


def no_features(reference):
    """The error for a vector reference without class values in the region."""
    return IannError(
        _(
            "Vector map <{}> has no features with a value in column <{}> in the "
            "current region"
        ).format(reference.name, reference.column)
    )
