from bon.cli import app

if __name__ == "__main__":  # vLLM spawns worker processes that re-import the main module
    app(prog_name="bon")
