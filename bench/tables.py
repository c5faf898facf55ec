"""Plain-text tables for the bench scripts (no GRASS needed)."""


def print_table(header, rows):
    """A plain-text table, columns padded to their widest cell."""
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    print("  ".join("{:<{w}}".format(h, w=w) for h, w in zip(header, widths)))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print("  ".join("{:<{w}}".format(str(x), w=w) for x, w in zip(row, widths)))
