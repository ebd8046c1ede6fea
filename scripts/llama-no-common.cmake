# Included right after llama.cpp's project() (CMAKE_PROJECT_llama.cpp_INCLUDE, Makefile):
# llama-cpp-python force-enables llama.cpp's "common" library (argument parsing, chat templates,
# sampling helpers for llama.cpp's own tools), which the Python package neither ships nor loads.
# Not building it halves the compile (149 -> 80 s on a 2-core machine, 2026-12-04).
set(LLAMA_BUILD_COMMON OFF CACHE BOOL "llama.cpp common library (unused by llama-cpp-python)" FORCE)
