"""Point maps: the labelled points read, proposed points written.

Points are written by v.in.ascii from text (one line a point), with their
attribute columns typed in SQL, into a temporary map renamed to the output
last: a run that fails leaves no half-written map.
"""

import os

import grass.script as gs

from iann.errors import IannError
from iann.grass.reference import find_vector
from iann.grass.temporary import temporary_map_name


def point_coordinates(name):
    """(x, y) of the points (and area centroids) of a vector map."""
    name = find_vector(name)
    text = gs.read_command(
        "v.out.ascii",
        input=name,
        type="point,centroid",
        format="point",
        separator="comma",
        quiet=True,
    )
    points = []
    for line in text.splitlines():
        fields = line.split(",")
        if len(fields) >= 2:
            points.append((float(fields[0]), float(fields[1])))
    return points


def write_points(output, x, y, columns, temporary_vectors):
    """A vector map of points at (x, y) with typed attribute columns.

    `columns` is a list of (name, SQL type, values), values None for an
    empty column (NULL in every row).
    """
    definition = ["x double precision", "y double precision"] + [
        "{} {}".format(name, kind) for name, kind, _values in columns
    ]
    # Text columns whose values all look like numbers are filled by SQL
    # after: v.in.ascii warns of them ("defined as string has only integer
    # values"), which would puzzle the user.
    later = [
        (name, values)
        for name, kind, values in columns
        if kind.startswith("varchar") and values is not None and looks_numeric(values)
    ]
    lines = []
    for i in range(len(x)):
        fields = ["{!r}".format(float(x[i])), "{!r}".format(float(y[i]))]
        for name, _kind, values in columns:
            value = "" if values is None or name in dict(later) else values[i]
            fields.append(str(value).replace("|", "/").replace("\n", " "))
        lines.append("|".join(fields))
    temporary = temporary_map_name("points")
    temporary_vectors.append(temporary)
    try:
        gs.write_command(
            "v.in.ascii",
            input="-",
            output=temporary,
            x=1,
            y=2,
            separator="pipe",
            columns=", ".join(definition),
            stdin="\n".join(lines) + "\n",
            quiet=True,
            overwrite=True,
        )
        if later:
            fill_text_columns(temporary, later)
    except gs.CalledModuleError:
        raise IannError(_("Writing the points of <{}> failed").format(output))
    gs.run_command("g.rename", vector=(temporary, output), overwrite=True, quiet=True)
    temporary_vectors.remove(temporary)
    # The history names the module's command line, which only a module run
    # by the GRASS parser has (CMDLINE); a script's maps go without.
    if "CMDLINE" in os.environ:
        gs.vector_history(output)
    return output


def looks_numeric(values):
    try:
        [float(value) for value in values if value != ""]
    except ValueError:
        return False
    return True


def fill_text_columns(name, columns):
    """Set text columns of the points (cat 1, 2, ... in order) by SQL."""
    connection = gs.vector_db(name)[1]
    statements = [
        "UPDATE {} SET {} = '{}' WHERE cat = {};".format(
            connection["table"], column, str(value).replace("'", "''"), cat
        )
        for column, values in columns
        for cat, value in enumerate(values, start=1)
    ]
    gs.write_command(
        "db.execute",
        input="-",
        database=connection["database"],
        driver=connection["driver"],
        stdin="BEGIN;\n" + "\n".join(statements) + "\nCOMMIT;\n",
    )
