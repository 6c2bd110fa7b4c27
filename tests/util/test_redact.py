"""fcdm.util.redact: one function masks every password a URI (or a message holding one) may carry."""
import pytest

from fcdm.util.redact import redact


@pytest.mark.parametrize("text, shown", [
    ("postgresql://user:secret@db:5432/optuna", "postgresql://user:***@db:5432/optuna"),
    ("postgresql+psycopg://u:secret@h:5/db", "postgresql+psycopg://u:***@h:5/db"),
    ("postgresql://user:pa/ss@db/optuna", "postgresql://user:***@db/optuna"),  # '/' in the password
    ("postgresql://user:p@ss@db/optuna", "postgresql://user:***@db/optuna"),  # '@' in the password
    ("postgresql://user:p:a:ss@db/optuna", "postgresql://user:***@db/optuna"),  # ':' in the password
    ("postgresql://user:p%2Fa%40s%3As@db/optuna", "postgresql://user:***@db/optuna"),  # percent-encoded
    ("postgresql://:secret@db/optuna", "postgresql://:***@db/optuna"),  # empty user name
    ("postgresql://user:@db/optuna", "postgresql://user:***@db/optuna"),  # empty password
    ("postgresql://db/optuna?password=secret&sslmode=require",
     "postgresql://db/optuna?password=***&sslmode=require"),
    ("postgresql://u@db/optuna?sslmode=require&PASSWORD=se/cr@et", "postgresql://u@db/optuna?sslmode=require&PASSWORD=***"),
    ("mysql://u:pw@db/x?password=pw2", "mysql://u:***@db/x?password=***"),
    ("https://u:tok@mlflow.example.org:443/", "https://u:***@mlflow.example.org:443/"),
    ("host=db user=u password=secret dbname=x", "host=db user=u password=*** dbname=x"),
    ("cannot open postgresql://u:secret@db/o (OperationalError)", "cannot open postgresql://u:***@db/o (OperationalError)"),
    ("error: 'postgresql://u:secret@db/o': refused", "error: 'postgresql://u:***@db/o': refused"),
])
def test_redact_masks_every_password(text, shown):
    assert redact(text) == shown
    assert "secret" not in redact(text) and "pa/ss" not in redact(text)


@pytest.mark.parametrize("text", [
    "sqlite:///runs/mlflow.db", "sqlite:////abs/path/with@sign:colon/mlflow.db", "http://127.0.0.1:5000",
    "postgresql://user@db:5432/optuna", "postgresql://db/optuna?sslmode=require", "journal:runs/journal.log",
    "file:///tmp/artifacts", "databricks", "", "no uri here: a:b@c",
])
def test_redact_leaves_uris_without_secrets_unchanged(text):
    assert redact(text) == text
