from mlpd.web.routes import route  # noqa: F401  (job routes come with the jobs capability)
