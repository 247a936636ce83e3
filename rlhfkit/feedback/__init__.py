"""Human feedback collection: a ranking web app on a real database.

Workflow: `rlhfkit label import` the output of `rlhfkit generate`,
`rlhfkit label add-annotator NAME` for each person (prints a private link),
`rlhfkit label serve`, then `rlhfkit label export --format rankings|pairs`.
See docs/feedback.md.
"""
