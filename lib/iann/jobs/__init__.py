"""Jobs: a classification of a region, cut in blocks run anywhere.

classify.py plans a job from a request (checks.py) and runs it; block.py
classifies one block in whatever process runs it; runs.py runs the
blocks in this process or on Dask (cluster.py); store.py keeps what a
job leaves on disk for a rerun (markers, lock, the maps written in
place); outputs.py finishes the output maps. The top of the library: it
may import every package below.
"""
