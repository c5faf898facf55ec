"""Open a module's dialog in the GRASS GUI, describe it and take a screenshot.

Run with Debian's /usr/bin/python3 (the GRASS GUI's Python, which has wx)
inside a GRASS session (GISBASE, GISRC, the installed addon on PATH) with
DISPLAY set to an X server, e.g. an Xvfb. The dialog is built exactly as
GRASS builds it when a module is started without arguments (the __main__ of
$GISBASE/gui/wxpython/gui_core/forms.py: grassTask + TaskFrame with a
StandaloneGrassInterface). The script prints one JSON line: the notebook's
tab labels, the options and flags shown on each tab (found through the
widgets the dialog made for them), the dialog's size and the screenshot's.

Regenerating the screenshots of the manual pages (from the checkout, with
the venv of .ci/env.sh active, grass-gui and xvfb installed):

    python3 testsuite/gui_dialog.py --regenerate

which installs the addon into a temporary GRASS_ADDON_BASE in a temporary
project, starts an Xvfb and writes <module>/i_ann_<name>.png for each
module (first tab, 650 x 700 pixels). One dialog by hand, in a session:

    /usr/bin/python3 testsuite/gui_dialog.py --screenshot shot.png i.ann.train
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODULES = ("i.ann.patches", "i.ann.train", "i.ann.classify", "i.ann.sample")
GRASS_PYTHON = "/usr/bin/python3"


def gui_environment(env=None):
    """The environment for this script: env plus the GUI's Python paths."""
    env = dict(env or os.environ)
    gisbase = env["GISBASE"]
    paths = [
        os.path.join(gisbase, "gui", "wxpython"),
        os.path.join(gisbase, "etc", "python"),
    ]
    # The venv's site-packages must not shadow Debian's (numpy, wx).
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env.pop("PYTHONHOME", None)
    env["GDK_BACKEND"] = "x11"
    # No accessibility bus or dconf under Xvfb: keep GTK from looking.
    env["NO_AT_BRIDGE"] = "1"
    env["GSETTINGS_BACKEND"] = "memory"
    return env


def start_xvfb(size="1280x1024x24"):
    """Start an Xvfb on a free display; return (process, ":N")."""
    read_fd, write_fd = os.pipe()
    process = subprocess.Popen(
        # -noreset: by default the server resets when its last client leaves,
        # and a client connecting meanwhile gets "unable to open display".
        ["Xvfb", "-displayfd", str(write_fd), "-screen", "0", size]
        + ["-nolisten", "tcp", "-noreset"],
        pass_fds=(write_fd,),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    os.close(write_fd)
    with os.fdopen(read_fd) as pipe:
        number = pipe.readline().strip()
    if not number:
        process.kill()
        raise RuntimeError("Xvfb did not start")
    return process, ":" + number


def stop_xvfb(process):
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def describe(module, screenshot=None, size=(650, 700), tab=0, timeout=60):
    """Open the dialog (in this process, which needs wx); return a dict."""
    import wx

    from grass.script.setup import set_gui_path

    set_gui_path()
    from grass.script import task as gtask

    from core import gcmd
    from core.giface import StandaloneGrassInterface
    from gui_core import forms

    # Errors the GUI would show in message boxes go to stderr instead (and
    # a modal box cannot block this headless run).
    def to_stderr(kind):
        def show(message="", *args, **kwargs):
            print("{}: {}".format(kind, message), file=sys.stderr)

        return show

    # (forms.py calls gcmd.GError; gselect, widgets etc. their own imports.)
    boxes = (("GError", "ERROR"), ("GWarning", "WARNING"), ("GMessage", "MESSAGE"))
    for name, kind in boxes:
        original = getattr(gcmd, name)
        for loaded in list(sys.modules.values()):
            if getattr(loaded, name, None) is original:
                setattr(loaded, name, to_stderr(kind))

    # The module's own start-up when asked for its interface (the GUI
    # hides its stderr: report it, and the time it takes).
    start = time.monotonic()
    try:
        probe = subprocess.run(
            [module, "--interface-description"], capture_output=True, text=True
        )
    except OSError as error:
        sys.exit("ERROR: cannot run {}: {}".format(module, error))
    interface_seconds = time.monotonic() - start
    if probe.returncode != 0:
        print(
            "ERROR: {} --interface-description failed:\n{}".format(
                module, probe.stderr
            ),
            file=sys.stderr,
        )
        sys.exit(1)

    app = wx.App(False)
    wx.Log.SetActiveTarget(wx.LogStderr())
    # No tooltip where Xvfb's pointer (the screen's centre) happens to be.
    wx.ToolTip.Enable(False)
    task = gtask.grassTask(module)
    if task.get_error_msg():
        print("ERROR: " + task.get_error_msg(), file=sys.stderr)
        sys.exit(1)
    frame = forms.TaskFrame(
        parent=None, giface=StandaloneGrassInterface(), task_description=task
    )
    frame.CentreOnScreen()
    frame.Show(True)
    app.SetTopWindow(frame)
    natural_size = tuple(frame.GetSize())
    if size:
        frame.SetSize(wx.Size(*size))
        frame.CentreOnScreen()
    notebook = frame.notebookpanel.notebook
    notebook.SetSelection(tab)
    frame.Layout()
    # The pointer to the screen's corner, off the dialog (no hover effects).
    frame.WarpPointer(-frame.GetScreenPosition().x, -frame.GetScreenPosition().y)

    result = {"module": module, "natural_size": natural_size}
    result["interface_seconds"] = round(interface_seconds, 2)
    result["interface_stderr"] = probe.stderr

    def page_of(window):
        """The label of the notebook tab a widget sits on (or None)."""
        while window is not None:
            parent = window.GetParent()
            if parent is notebook:
                break
            window = parent
        if window is None:
            return None
        for index in range(notebook.GetPageCount()):
            if notebook.GetPage(index) is window:
                return notebook.GetPageText(index)
        return None

    def shown(items):
        """name -> tab of the items that have a widget in the dialog."""
        found = {}
        for item in items:
            ids = [i for i in item.get("wxId", []) if i is not None and i != -1]
            for widget_id in ids:
                widget = wx.FindWindowById(widget_id, frame)
                if widget is not None:
                    found[item["name"]] = page_of(widget)
                    break
        return found

    def snapshot():
        """Copy the dialog's pixels from the screen into a bitmap."""
        rect = frame.GetScreenRect()
        bitmap = wx.Bitmap(rect.width, rect.height)
        memory = wx.MemoryDC(bitmap)
        memory.Blit(0, 0, rect.width, rect.height, wx.ScreenDC(), rect.x, rect.y)
        memory.SelectObject(wx.NullBitmap)
        return bitmap

    def finish():
        try:
            wx.Yield()
            result["tabs"] = [
                notebook.GetPageText(i) for i in range(notebook.GetPageCount())
            ]
            result["selected_tab"] = notebook.GetPageText(notebook.GetSelection())
            result["options"] = shown(task.params)
            result["flags"] = shown(task.flags)
            result["params"] = {
                p["name"]: {
                    key: p.get(key)
                    for key in ("type", "multiple", "required", "default", "values")
                }
                for p in task.params
            }
            # The command the Run button would start, as far as it is filled.
            result["command"] = frame.notebookpanel.createCmd(
                ignoreErrors=True, ignoreRequired=True
            )
            result["title"] = frame.GetTitle()
            result["size"] = tuple(frame.GetSize())
            result["status"] = frame.GetStatusBar().GetStatusText()
            if screenshot:
                bitmap = snapshot()
                if not bitmap.SaveFile(str(screenshot), wx.BITMAP_TYPE_PNG):
                    print("ERROR: could not save " + str(screenshot), file=sys.stderr)
                image = bitmap.ConvertToImage()
                result["screenshot"] = str(screenshot)
                result["screenshot_size"] = (image.GetWidth(), image.GetHeight())
        finally:
            frame.Destroy()
            app.ExitMainLoop()

    def watchdog():
        print("ERROR: the dialog did not finish in time", file=sys.stderr)
        sys.stderr.flush()
        os._exit(3)

    # Let the dialog lay out and paint (the frame, then its pages).
    wx.CallLater(1500, finish)
    wx.CallLater(timeout * 1000, watchdog)
    app.MainLoop()
    print(json.dumps(result))
    return result


def run_dialog(module, env, screenshot=None, size=(650, 700), timeout=120):
    """Run this script for one module in a subprocess with Debian's Python."""
    command = [GRASS_PYTHON, os.path.abspath(__file__), module]
    if screenshot:
        command += ["--screenshot", str(screenshot)]
    if size:
        command += ["--size", "{}x{}".format(*size)]
    return subprocess.run(
        command,
        env=gui_environment(env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def regenerate():
    """Write the manual pages' screenshots (a temporary session and Xvfb)."""
    repo = Path(__file__).resolve().parents[1]
    python_path = subprocess.check_output(
        ["grass", "--config", "python_path"], text=True
    ).strip()
    sys.path.insert(0, python_path)
    sys.path.insert(0, str(repo / "testsuite"))
    import grass.script.setup as gsetup
    from conftest import install_addon

    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            ["grass", "-c", "EPSG:3358", "-e", os.path.join(tmp, "nc")],
            check=True,
            capture_output=True,
        )
        session = gsetup.init(os.path.join(tmp, "nc", "PERMANENT"))
        addons = Path(tmp) / "addons"
        os.environ["GRASS_ADDON_BASE"] = str(addons)
        os.environ["PATH"] = os.pathsep.join(
            [str(addons / "scripts"), os.environ["PATH"]]
        )
        installed = install_addon(addons)
        if installed.returncode != 0:
            sys.exit(installed.stdout + installed.stderr)
        xvfb, display = start_xvfb()
        try:
            env = dict(os.environ, DISPLAY=display)
            for module in MODULES:
                target = repo / module / "{}.png".format(module.replace(".", "_"))
                done = run_dialog(module, env, screenshot=target)
                sys.stderr.write(done.stderr)
                if done.returncode != 0:
                    sys.exit("{} failed".format(module))
                print(done.stdout.strip().splitlines()[-1])
        finally:
            stop_xvfb(xvfb)
            session.finish()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("module", nargs="?")
    parser.add_argument("--screenshot", help="PNG file to write")
    parser.add_argument("--size", default="650x700", help="dialog size, WxH")
    parser.add_argument("--tab", type=int, default=0, help="tab to show")
    parser.add_argument(
        "--regenerate", action="store_true", help="write the manuals' screenshots"
    )
    args = parser.parse_args()
    if args.regenerate:
        regenerate()
        return
    if not args.module:
        parser.error("a module name is required")
    size = tuple(int(n) for n in args.size.split("x")) if args.size else None
    describe(args.module, screenshot=args.screenshot, size=size, tab=args.tab)


if __name__ == "__main__":
    main()
