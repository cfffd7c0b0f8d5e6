"""The cluster's services, one package each, each started with `python -m services.<name>`."""
