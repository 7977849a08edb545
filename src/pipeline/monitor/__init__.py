"""Monitoring between runs: the drift report (reference run vs current run) and the review queue (the
photos without labels the champion is least sure of, as a LabelMe folder). Library code: no Prefect."""
