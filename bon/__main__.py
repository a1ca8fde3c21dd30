from bon.cli import app

app(prog_name="bon")
