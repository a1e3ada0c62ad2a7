from histokd.cli import app

app(prog_name="histokd")
