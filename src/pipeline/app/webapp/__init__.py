"""The search and runs app (`pipeline app`): Streamlit pages over the library's retriever, run
records and lineage. `backend` and `runs_view` hold what the pages compute (no Streamlit import);
`main` is the script `streamlit run` executes; `launch` builds that command."""
