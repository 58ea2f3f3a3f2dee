"""``python -m ecgjax.embed``: the documented entry point; the CLI is ecgjax.inference.embed."""
from ecgjax.inference.embed import main

if __name__ == "__main__":
  main()
