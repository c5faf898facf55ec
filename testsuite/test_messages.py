"""What users read: --quiet silences, --verbose adds, no traceback on bad input."""

from conftest import make_synthetic, own_messages, run, run_ok


def test_quiet_and_verbose(mapset, tmp_path):
    bands, reference = make_synthetic()
    common = dict(input=",".join(bands), reference=reference, size=8, number=12)
    quiet = run_ok("i.ann.patches", "quiet", output=tmp_path / "q", **common)
    normal = run_ok("i.ann.patches", output=tmp_path / "n", **common)
    verbose = run_ok("i.ann.patches", "verbose", output=tmp_path / "v", **common)
    assert own_messages(quiet.stderr) == "" and quiet.stdout == ""
    # The summary line names the dataset written, as the manual shows it.
    assert "Wrote " in normal.stderr and "<{}>".format(tmp_path / "n") in normal.stderr
    assert len(verbose.stderr.splitlines()) > len(normal.stderr.splitlines())

    train = dict(input=tmp_path / "n", filters=2, epochs=2, batch_size=4)
    quiet = run_ok("i.ann.train", "quiet", output=tmp_path / "mq", **train)
    normal = run_ok("i.ann.train", output=tmp_path / "mn", **train)
    assert own_messages(quiet.stderr) == "", quiet.stderr
    assert "Epoch 2/2: loss=" in normal.stderr
    assert "Saved the model" in normal.stderr
    assert len(own_messages(normal.stderr).splitlines()) < 12, normal.stderr

    classify = dict(input=",".join(bands), model=tmp_path / "mn")
    quiet = run_ok("i.ann.classify", "quiet", output="cq", **classify)
    normal = run_ok("i.ann.classify", output="cn", **classify)
    verbose = run_ok("i.ann.classify", "verbose", output="cv", **classify)
    assert own_messages(quiet.stderr) == "", quiet.stderr
    assert "<cn>" in normal.stderr
    assert len(verbose.stderr.splitlines()) > len(normal.stderr.splitlines())


def bad_calls(tmp_path, bundle, patches):
    """Foreseeable mistakes, one module call each (and the message expected)."""
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "metadata.json").write_text("{not json")
    text_file = tmp_path / "notes.txt"
    text_file.write_text("hello")
    return [
        (
            "i.ann.patches",
            dict(input="nosuchmap", reference="s_ref", output=tmp_path / "a"),
            "Raster map <nosuchmap> not found",
        ),
        (
            "i.ann.patches",
            dict(input="s_b1", reference="nosuchref", output=tmp_path / "a"),
            "Raster map <nosuchref> not found",
        ),
        (
            "i.ann.patches",
            dict(input="s_b1", reference="s_b1", output=tmp_path / "a"),
            "is not an integer map (type FCELL)",
        ),
        (
            "i.ann.patches",
            dict(input="s_b1", reference="s_ref", output="/no/such/dir/x"),
            "folder </no/such/dir> does not exist",
        ),
        (
            "i.ann.patches",
            dict(input="s_b1", reference="s_ref", output=tmp_path / "a", size=100000),
            "Value <100000> out of range for parameter <size>",
        ),
        (
            "i.ann.patches",
            dict(
                input="s_b1",
                reference="s_ref",
                output=tmp_path / "a",
                stride=0,
                sampling="grid",
            ),
            "stride must be at least 1 cell, not 0",
        ),
        (
            "i.ann.patches",
            dict(group="nogroup", reference="s_ref", output=tmp_path / "a"),
            "Imagery group <nogroup> not found",
        ),
        (
            "i.ann.train",
            dict(input=corrupt, output=tmp_path / "m"),
            "<{}> is not a dataset written by i.ann.patches".format(corrupt),
        ),
        (
            "i.ann.train",
            dict(input=text_file, output=tmp_path / "m"),
            "Dataset <{}> is a file, not a folder".format(text_file),
        ),
        (
            "i.ann.train",
            dict(input=tmp_path, output=tmp_path / "m"),
            "metadata.json",
        ),
        (
            "i.ann.train",
            dict(input=tmp_path / "nothing", output=tmp_path / "m"),
            "does not exist",
        ),
        (
            "i.ann.train",
            dict(input=patches, output=tmp_path / "m", params="oops"),
            "Parameter <oops> is not of the form key=value",
        ),
        (
            "i.ann.train",
            dict(input=patches, output=tmp_path / "m", filters=0),
            "Value <0> out of range for parameter <filters>",
        ),
        (
            "i.ann.train",
            dict(input=patches, output=tmp_path / "m", freeze="copied"),
            "Option <freeze> requires <pretrained>",
        ),
        (
            "i.ann.train",
            dict(input=patches, output=tmp_path / "m", architecture=text_file),
            "Cannot load architecture file <{}>".format(text_file),
        ),
        (
            "i.ann.classify",
            dict(input="s_b1,s_b2", model=corrupt, output="x"),
            "<{}> is not a model bundle written by i.ann.train".format(corrupt),
        ),
        (
            "i.ann.classify",
            dict(input="s_b1,s_b2", model=tmp_path / "none", output="x"),
            "Model bundle <{}> does not exist".format(tmp_path / "none"),
        ),
        (
            "i.ann.classify",
            dict(input="s_b1", model=bundle, output="x"),
            "was trained on 2 bands",
            "1 were given",
        ),
        (
            "i.ann.classify",
            dict(input="s_b1,nosuch", model=bundle, output="x"),
            "Raster map <nosuch> not found",
        ),
        (
            "i.ann.classify",
            dict(input="s_b1,s_b2", model=bundle, output="x", reference="s_b1"),
            "is not an integer map (type FCELL)",
        ),
        (
            "i.ann.classify",
            dict(input="s_b1,s_b2", model=bundle),
            "At least one of the following options is required: <output> and <-e>",
        ),
        (
            "i.ann.classify",
            dict(
                input="s_b1,s_b2",
                model=bundle,
                output="x",
                report="/no/dir/r.json",
                reference="s_ref",
            ),
            "Report file </no/dir/r.json>: folder </no/dir> does not exist",
        ),
        (
            "i.ann.classify",
            dict(flags="e", classified="nosuch", reference="s_ref"),
            "Raster map <nosuch> not found",
        ),
    ]


def test_bad_input_gives_a_message_not_a_traceback(
    mapset, tmp_path, trained_bundle, synthetic_patches
):
    make_synthetic()
    for module, options, *expected in bad_calls(
        tmp_path, trained_bundle, synthetic_patches
    ):
        flags = [options.pop("flags")] if "flags" in options else []
        result = run(module, *flags, **options)
        assert result.returncode != 0, (module, options)
        assert "Traceback" not in result.stderr, result.stderr
        assert "ERROR" in result.stderr, (module, options, result.stderr)
        assert expected, (module, options)  # each case names its own message
        # GRASS wraps long messages: compare with the line breaks taken out.
        message = " ".join(result.stderr.split())
        for fragment in expected:
            assert fragment in message, (module, options, result.stderr)
