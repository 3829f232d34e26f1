// llama.cpp's view of a GGUF file, through its C API (llama.h), for bench/export_check.sh:
//   lcpp_logits MODEL.gguf IDS.txt N_PROMPT N_GEN LOGITS.f32 N_GPU_LAYERS [TEXTS.txt]
// IDS.txt holds token ids (whitespace-separated).
//  1. teacher-forced: all ids in one batch, the logits of every position written to LOGITS.f32
//     (n_ids x n_vocab float32, row-major);
//  2. greedy: from the first N_PROMPT ids, N_GEN tokens by argmax (stopping at end-of-generation),
//     printed as one line "greedy: id id ...";
//  3. with TEXTS.txt: each line (with "\n" written as the two characters \ and n) tokenized the way
//     llama.cpp tokenizes a prompt (special tokens parsed, BOS as the model says), printed as
//     "tokens: id id ...".
// Build (bench/export_check.sh does it): g++ -O2 -std=c++17 lcpp_logits.cpp -I<src>/include
//   -I<src>/ggml/include -L<build>/bin -lllama -Wl,-rpath,<build>/bin
#include "llama.h"

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

static int fail(const std::string & why) {
    std::fprintf(stderr, "lcpp_logits: %s\n", why.c_str());
    return 1;
}

static int argmax(const float * row, int n) {
    int best = 0;
    for (int j = 1; j < n; j++) {
        if (row[j] > row[best]) best = j;
    }
    return best;
}

// Decode ids[0..n) at positions pos0.., asking for logits at every position (all) or only the last.
static bool decode(llama_context * ctx, const std::vector<llama_token> & ids, int pos0, bool all) {
    llama_batch b = llama_batch_init((int) ids.size(), 0, 1);
    for (size_t i = 0; i < ids.size(); i++) {
        b.token[i] = ids[i];
        b.pos[i] = pos0 + (int) i;
        b.n_seq_id[i] = 1;
        b.seq_id[i][0] = 0;
        b.logits[i] = all || i + 1 == ids.size();
    }
    b.n_tokens = (int) ids.size();
    const int rc = llama_decode(ctx, b);
    llama_batch_free(b);
    return rc == 0;
}

int main(int argc, char ** argv) {
    if (argc < 7) {
        return fail("usage: lcpp_logits MODEL.gguf IDS.txt N_PROMPT N_GEN LOGITS.f32 N_GPU_LAYERS [TEXTS.txt]");
    }
    const std::string model_path = argv[1], ids_path = argv[2], out_path = argv[5];
    const int n_prompt = std::atoi(argv[3]), n_gen = std::atoi(argv[4]), n_gpu = std::atoi(argv[6]);

    std::vector<llama_token> ids;
    {
        std::ifstream f(ids_path);
        for (long v; f >> v;) ids.push_back((llama_token) v);
    }
    if (ids.empty() || n_prompt < 1 || n_prompt > (int) ids.size() || n_gen < 0) {
        return fail("no token ids, or N_PROMPT not in [1, number of ids], or N_GEN < 0");
    }

    llama_backend_init();
    llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers = n_gpu;
    llama_model * model = llama_model_load_from_file(model_path.c_str(), mp);
    if (!model) return fail("llama.cpp could not load " + model_path);
    const llama_vocab * vocab = llama_model_get_vocab(model);
    const int n_vocab = llama_vocab_n_tokens(vocab);

    llama_context_params cp = llama_context_default_params();
    const int n_ctx = (int) ids.size() + n_gen + 16;
    cp.n_ctx = n_ctx;
    cp.n_batch = n_ctx;
    cp.n_ubatch = n_ctx;
    cp.no_perf = true;
    llama_context * ctx = llama_init_from_model(model, cp);
    if (!ctx) return fail("llama.cpp could not create a context");

    // 1. teacher-forced logits
    if (!decode(ctx, ids, 0, true)) return fail("llama_decode failed on the teacher-forced batch");
    {
        std::ofstream out(out_path, std::ios::binary);
        for (size_t i = 0; i < ids.size(); i++) {
            const float * row = llama_get_logits_ith(ctx, (int) i);
            if (!row) return fail("no logits for position " + std::to_string(i));
            out.write(reinterpret_cast<const char *>(row), sizeof(float) * n_vocab);
        }
        if (!out) return fail("could not write " + out_path);
    }

    // 2. greedy continuation of the first n_prompt ids
    llama_memory_clear(llama_get_memory(ctx), true);
    std::vector<llama_token> prompt(ids.begin(), ids.begin() + n_prompt);
    if (!decode(ctx, prompt, 0, false)) return fail("llama_decode failed on the prompt");
    std::printf("greedy:");
    int pos = n_prompt;
    for (int k = 0; k < n_gen; k++) {
        const llama_token t = argmax(llama_get_logits_ith(ctx, -1), n_vocab);
        std::printf(" %d", t);
        if (llama_vocab_is_eog(vocab, t)) break;
        if (!decode(ctx, {t}, pos++, false)) return fail("llama_decode failed while generating");
    }
    std::printf("\n");

    // 3. llama.cpp's own tokenization of some texts
    if (argc > 7) {
        std::ifstream f(argv[7]);
        for (std::string line; std::getline(f, line);) {
            std::string text;
            for (size_t i = 0; i < line.size(); i++) {
                if (line[i] == '\\' && i + 1 < line.size() && line[i + 1] == 'n') {
                    text += '\n';
                    i++;
                } else {
                    text += line[i];
                }
            }
            std::vector<llama_token> toks(text.size() + 8);
            int n = llama_tokenize(vocab, text.data(), (int) text.size(), toks.data(), (int) toks.size(),
                                   true, true);
            if (n < 0) return fail("llama_tokenize failed");
            std::printf("tokens:");
            for (int i = 0; i < n; i++) std::printf(" %d", toks[i]);
            std::printf("\n");
        }
    }
    llama_free(ctx);
    llama_model_free(model);
    llama_backend_free();
    return 0;
}
