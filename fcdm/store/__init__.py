"""Everything that lives under a store (`runs/` by default): where each thing lies (`layout`), MLflow
tracking (`tracking`), checkpoints and the progress sidecar (`checkpoints`, `progress`), which runner
holds a job (`claims`), a job's files and state (`jobs`), and the MLflow UI over it all (`ui`).

Writers here go through fcdm.util.files (atomic, durable); readers need neither torch nor MLflow
except where they load a checkpoint or talk to the tracking server.
"""
