// llama.cpp's C++ JSON-schema-to-grammar converter, the one llama-server
// runs for a request's json_schema (and so for an Ollama `format`), as a C
// function that tests/llm/ollama_server.py calls through ctypes. Compiled
// by tests/llm/setup.sh from the llama.cpp sources of the same
// llama-cpp-python release the server runs; llama-cpp-python itself only
// ships a Python port of the converter, which differs (it drops integer
// ranges, and nests bounded repetitions until llama.cpp's grammar parser
// refuses them).
#include "json-schema-to-grammar.h"

#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>

static char * copy(const std::string & text) {
    char * out = static_cast<char *>(std::malloc(text.size() + 1));
    if (out) {
        std::memcpy(out, text.c_str(), text.size() + 1);
    }
    return out;
}

extern "C" {

// The GBNF grammar for `schema` (JSON text, NUL-terminated); NULL, with
// `*error` set, when the text is not JSON or the converter refuses the
// schema. Both strings are released with macha_free.
char * macha_schema_to_grammar(const char * schema, char ** error) {
    *error = nullptr;
    try {
        return copy(json_schema_to_grammar(common_json::parse(schema)));
    } catch (const std::exception & e) {
        *error = copy(e.what());
        return nullptr;
    }
}

void macha_free(char * text) {
    std::free(text);
}
}
