from doc_pipeline.cli import app

app(prog_name="doc-pipeline")
