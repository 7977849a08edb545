"""The script `streamlit run` executes (see `launch.py`): page set-up and navigation. The work dir
comes from $PIPELINE_APP_WORKDIR, or `--workdir W` after streamlit's own `--`."""
from __future__ import annotations

import argparse
import os
from functools import partial

import streamlit as st

from pipeline.app.webapp import runs_page, search_page
from pipeline.app.webapp.backend import WORKDIR_ENV


def _workdir() -> str:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--workdir", default=os.environ.get(WORKDIR_ENV, "work"))
    return os.path.abspath(parser.parse_known_args()[0].workdir)


def main() -> None:
    st.set_page_config(page_title="vehicle-damage index", layout="wide")
    workdir = _workdir()
    pages = [
        st.Page(partial(search_page.render, workdir), title="Search", default=True),
        st.Page(partial(runs_page.render_runs, workdir), title="Runs", url_path="runs"),
        st.Page(partial(runs_page.render_compare, workdir), title="Compare", url_path="compare"),
        st.Page(partial(runs_page.render_models, workdir), title="Models", url_path="models"),
    ]
    st.navigation(pages).run()
    st.sidebar.caption(f"work dir: {workdir}")


main()
