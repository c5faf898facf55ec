# Sourced by the project's scripts: where the virtual environment lives.
# It is kept outside the checkout, because g.extension copies the whole
# checkout (and rewrites every .py file in it) when it installs the addon.
IANN_VENV=${IANN_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/i.ann/venv}
export IANN_VENV
export PATH="$IANN_VENV/bin:$PATH"
