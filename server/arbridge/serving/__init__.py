"""The request path: contract in, text out (see the README's Layout section).

interceptors -> service (validation, prompts, sessions) -> backend -> output
"""
