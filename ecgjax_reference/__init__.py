"""Reference implementations of ecgjax exports without JAX (numpy + safetensors only)."""
