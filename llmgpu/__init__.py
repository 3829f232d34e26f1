"""llmgpu: LLM inference on wgpu (WebGPU).

    import llmgpu
    llm = llmgpu.load()                       # the default model, SmolLM2-135M-Instruct
    print(llm.generate("Why is the sky blue?", max_tokens=100))
    chat = llm.chat(system="Be brief.")
    print(chat.send("Hello!"))
"""
from .api import LLM, load
from .chat import Chat

try:
    from importlib.metadata import PackageNotFoundError, version
    __version__ = version("llmgpu")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = ["load", "LLM", "Chat", "__version__"]
