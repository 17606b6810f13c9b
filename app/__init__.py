"""Release Pipeline: git events in, deployments through phases out."""
