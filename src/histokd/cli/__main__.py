from histokd.cli import app

app()
