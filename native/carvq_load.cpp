// carvq-load: load GGUF files through the (patched) llama.cpp loader and run one decode step on each.
//
//   carvq-load [-v] [--mtp] FILE...   the files given
//   carvq-load [-v] [--mtp] -         one path per line from stdin
//
// -v prints llama.cpp's log to stderr; --mtp also loads multi-token-prediction layers.
//
// For every file it prints, flushed, one line "BEGIN <path>" and then exactly one of
//   "OK <path>"                          loaded, context created, a batch of tokens decoded
//   "REJECTED <path>\t<message>"         refused; the message is every error logged for the file
// A file after which neither follows crashed the process (abort, signal or sanitizer report).
// The caller restarts the program on the remaining files. Exit status 0 when every file ended
// in OK or REJECTED.

#include "llama.h"

#include <cstdio>
#include <cstring>
#include <iostream>
#include <string>
#include <vector>

static std::string g_error; // every error-level message of the current file, in order
static bool        g_in_error = false;
static bool        g_verbose  = false;
static bool        g_load_mtp = false;

static void log_callback(ggml_log_level level, const char * text, void * /*user_data*/) {
    if (level == GGML_LOG_LEVEL_ERROR) {
        if (!g_in_error && !g_error.empty()) {
            g_error += " | ";
        }
        g_error += text;
        g_in_error = true;
    } else if (level != GGML_LOG_LEVEL_CONT) {
        g_in_error = false;
    } else if (g_in_error) {
        g_error += text;
    }
    if (g_verbose) {
        fputs(text, stderr);
    }
}

static std::string one_line(std::string s) {
    for (char & c : s) {
        if (c == '\n' || c == '\t' || c == '\r') {
            c = ' ';
        }
    }
    while (!s.empty() && s.back() == ' ') {
        s.pop_back();
    }
    return s;
}

// returns an empty string on success, else the reason
static std::string run_one(const std::string & path) {
    g_error.clear();
    g_in_error = false;

    llama_model_params mparams = llama_model_default_params();
    mparams.n_gpu_layers = 0;
    mparams.load_mtp     = g_load_mtp;

    llama_model * model = llama_model_load_from_file(path.c_str(), mparams);
    if (model == nullptr) {
        return g_error.empty() ? std::string("(no message)") : g_error;
    }

    std::string err;

    llama_context_params cparams = llama_context_default_params();
    cparams.n_ctx           = 64;
    cparams.n_batch         = 8;
    cparams.n_ubatch        = 8;
    cparams.n_seq_max       = 1;
    cparams.n_threads       = 2;
    cparams.n_threads_batch = 2;

    llama_context * ctx = llama_init_from_model(model, cparams);
    if (ctx == nullptr) {
        err = g_error.empty() ? std::string("context creation failed (no message)") : g_error;
    } else {
        const llama_vocab * vocab = llama_model_get_vocab(model);
        const int32_t n_vocab = llama_vocab_n_tokens(vocab);

        // first, last and a middle token: every row of the embedding table is reachable
        std::vector<llama_token> tokens = { 0, n_vocab - 1, n_vocab / 2 };
        const int32_t rc = llama_decode(ctx, llama_batch_get_one(tokens.data(), (int32_t) tokens.size()));
        if (rc != 0) {
            err = "llama_decode returned " + std::to_string(rc) + (g_error.empty() ? "" : ": " + g_error);
        }
        llama_free(ctx);
    }

    llama_model_free(model);
    return err;
}

int main(int argc, char ** argv) {
    std::vector<std::string> paths;
    bool from_stdin = false;
    for (int i = 1; i < argc; ++i) {
        if (strcmp(argv[i], "-v") == 0) {
            g_verbose = true;
        } else if (strcmp(argv[i], "--mtp") == 0) {
            g_load_mtp = true;
        } else if (strcmp(argv[i], "-") == 0) {
            from_stdin = true;
        } else {
            paths.emplace_back(argv[i]);
        }
    }
    if (!from_stdin && paths.empty()) {
        fprintf(stderr, "usage: %s [-v] [--mtp] FILE... | -\n", argv[0]);
        return 2;
    }

    llama_log_set(log_callback, nullptr);
    llama_backend_init();

    auto handle = [](const std::string & path) {
        printf("BEGIN %s\n", path.c_str());
        fflush(stdout);
        const std::string err = run_one(path);
        if (err.empty()) {
            printf("OK %s\n", path.c_str());
        } else {
            printf("REJECTED %s\t%s\n", path.c_str(), one_line(err).c_str());
        }
        fflush(stdout);
    };

    if (from_stdin) {
        std::string line;
        while (std::getline(std::cin, line)) {
            if (!line.empty()) {
                handle(line);
            }
        }
    } else {
        for (const auto & path : paths) {
            handle(path);
        }
    }

    llama_backend_free();
    return 0;
}
