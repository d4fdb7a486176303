// Reference numbers from llama.cpp itself, for the GGUF and quantisation fixtures.
//
// Built and driven by scripts/make_gguf_fixtures.py and scripts/make_quant_fixtures.py (they compile it against
// the libllama/libggml of the llama.cpp build that scripts/compare-llama-cpp.sh makes, pinned to the sources that
// llama-cpp-python 0.3.36 vendors). Not part of the Rust build.
//
//   llama_cpp_ref logits [--override-kv KEY=int:N]... MODEL.gguf OUT.bin KV_TYPE FLASH_ATTN N_GEN THREADS TOKEN_ID...
//       Evaluates the prompt (one llama_decode, all positions output) in a fresh context and writes
//       int32 n_pos, int32 n_vocab, f32 logits[n_pos][n_vocab], int32 n_gen, int32 greedy[n_gen]
//       (greedy = argmax continuation, one token per llama_decode, lowest id on ties).
//       KV_TYPE: f32 | f16 (cache type of K and V); FLASH_ATTN: on | off | auto.
//   llama_cpp_ref quant TYPE IN.f32 N_PER_ROW OUT.q OUT_DEQ.f32
//       Quantises IN (rows of N_PER_ROW floats) with ggml_quantize_chunk (no importance matrix: the *_ref
//       quantisers, as llama-quantize without --imatrix uses) and writes the raw blocks, then ggml's own
//       dequantisation (type_traits.to_float) of them. TYPE is a ggml type name: q4_0, q8_0, q4_K, ...
//   llama_cpp_ref tokenize MODEL.gguf TEXT_FILE
//       Prints llama.cpp's token ids for the UTF-8 text (add_special=false, parse_special=true), comma-separated.
#include "ggml.h"
#include "llama.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

static void quiet_log(ggml_log_level level, const char * text, void *) {
    if (level >= GGML_LOG_LEVEL_WARN || getenv("LLAMA_REF_VERBOSE")) {
        fputs(text, stderr);
    }
}

static bool no_progress(float, void *) { return true; }

static std::vector<char> read_file(const char * path) {
    FILE * f = fopen(path, "rb");
    if (!f) { perror(path); exit(1); }
    std::vector<char> buf;
    char tmp[65536];
    size_t n;
    while ((n = fread(tmp, 1, sizeof tmp, f)) > 0) buf.insert(buf.end(), tmp, tmp + n);
    fclose(f);
    return buf;
}

static void write_file(const char * path, const void * data, size_t n) {
    FILE * f = fopen(path, "wb");
    if (!f || fwrite(data, 1, n, f) != n) { perror(path); exit(1); }
    fclose(f);
}

static int argmax(const float * v, int n) {
    int best = 0;
    for (int i = 1; i < n; i++) if (v[i] > v[best]) best = i;
    return best;
}

// "KEY=int:N", "KEY=float:X" or "KEY=bool:true|false", as llama-cli's --override-kv.
static bool parse_override(const char * spec, std::vector<llama_model_kv_override> & out) {
    const char * eq = strchr(spec, '=');
    if (!eq || eq - spec >= 128) return false;
    llama_model_kv_override o = {};
    memcpy(o.key, spec, eq - spec);
    const std::string v = eq + 1;
    if (v.rfind("int:", 0) == 0) { o.tag = LLAMA_KV_OVERRIDE_TYPE_INT; o.val_i64 = atoll(v.c_str() + 4); }
    else if (v.rfind("float:", 0) == 0) { o.tag = LLAMA_KV_OVERRIDE_TYPE_FLOAT; o.val_f64 = atof(v.c_str() + 6); }
    else if (v.rfind("bool:", 0) == 0) { o.tag = LLAMA_KV_OVERRIDE_TYPE_BOOL; o.val_bool = v == "bool:true"; }
    else return false;
    out.push_back(o);
    return true;
}

static int cmd_logits(int argc, char ** argv) {
    std::vector<llama_model_kv_override> overrides;
    while (argc >= 2 && !strcmp(argv[0], "--override-kv")) {
        if (!parse_override(argv[1], overrides)) { fprintf(stderr, "bad --override-kv %s\n", argv[1]); return 2; }
        argc -= 2;
        argv += 2;
    }
    if (argc < 7) { fprintf(stderr, "usage: logits MODEL OUT KV_TYPE FLASH_ATTN N_GEN THREADS IDS...\n"); return 2; }
    const char * model_path = argv[0];
    const char * out_path = argv[1];
    const std::string kv = argv[2];
    const std::string fa = argv[3];
    const int n_gen = atoi(argv[4]);
    const int n_threads = atoi(argv[5]);
    std::vector<llama_token> prompt;
    for (int i = 6; i < argc; i++) prompt.push_back(atoi(argv[i]));

    llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers = 0;
    mp.progress_callback = no_progress;
    if (!overrides.empty()) {
        overrides.emplace_back();
        overrides.back().key[0] = 0;  // terminator
        mp.kv_overrides = overrides.data();
    }
    llama_model * model = llama_model_load_from_file(model_path, mp);
    if (!model) { fprintf(stderr, "cannot load %s\n", model_path); return 1; }
    const int n_vocab = llama_vocab_n_tokens(llama_model_get_vocab(model));

    llama_context_params cp = llama_context_default_params();
    const int n_total = (int) prompt.size() + n_gen;
    cp.n_ctx = 128 > n_total ? 128 : n_total;
    cp.n_batch = cp.n_ctx;
    cp.n_ubatch = cp.n_ctx;
    cp.n_seq_max = 1;
    cp.n_threads = n_threads;
    cp.n_threads_batch = n_threads;
    cp.type_k = cp.type_v = kv == "f16" ? GGML_TYPE_F16 : GGML_TYPE_F32;
    cp.flash_attn_type = fa == "on" ? LLAMA_FLASH_ATTN_TYPE_ENABLED
                       : fa == "off" ? LLAMA_FLASH_ATTN_TYPE_DISABLED : LLAMA_FLASH_ATTN_TYPE_AUTO;
    cp.no_perf = true;
    llama_context * ctx = llama_init_from_model(model, cp);
    if (!ctx) { fprintf(stderr, "cannot create context\n"); return 1; }

    const int n_pos = (int) prompt.size();
    llama_batch batch = llama_batch_init(n_pos, 0, 1);
    for (int i = 0; i < n_pos; i++) {
        batch.token[i] = prompt[i];
        batch.pos[i] = i;
        batch.n_seq_id[i] = 1;
        batch.seq_id[i][0] = 0;
        batch.logits[i] = 1;
    }
    batch.n_tokens = n_pos;
    if (llama_decode(ctx, batch) != 0) { fprintf(stderr, "llama_decode failed\n"); return 1; }
    std::vector<float> logits((size_t) n_pos * n_vocab);
    for (int i = 0; i < n_pos; i++) {
        memcpy(&logits[(size_t) i * n_vocab], llama_get_logits_ith(ctx, i), sizeof(float) * n_vocab);
    }
    llama_batch_free(batch);

    std::vector<int32_t> greedy;
    llama_token tok = argmax(&logits[(size_t) (n_pos - 1) * n_vocab], n_vocab);
    for (int g = 0; g < n_gen; g++) {
        greedy.push_back(tok);
        if (g + 1 == n_gen) break;
        llama_batch one = llama_batch_init(1, 0, 1);
        one.token[0] = tok;
        one.pos[0] = n_pos + g;
        one.n_seq_id[0] = 1;
        one.seq_id[0][0] = 0;
        one.logits[0] = 1;
        one.n_tokens = 1;
        if (llama_decode(ctx, one) != 0) { fprintf(stderr, "llama_decode failed\n"); return 1; }
        tok = argmax(llama_get_logits_ith(ctx, 0), n_vocab);
        llama_batch_free(one);
    }

    FILE * f = fopen(out_path, "wb");
    if (!f) { perror(out_path); return 1; }
    int32_t hdr[2] = { n_pos, n_vocab };
    fwrite(hdr, sizeof hdr, 1, f);
    fwrite(logits.data(), sizeof(float), logits.size(), f);
    int32_t ng = (int32_t) greedy.size();
    fwrite(&ng, sizeof ng, 1, f);
    fwrite(greedy.data(), sizeof(int32_t), greedy.size(), f);
    fclose(f);

    llama_free(ctx);
    llama_model_free(model);
    return 0;
}

static int cmd_quant(int argc, char ** argv) {
    if (argc < 5) { fprintf(stderr, "usage: quant TYPE IN.f32 N_PER_ROW OUT.q OUT_DEQ.f32\n"); return 2; }
    const std::string name = argv[0];
    ggml_type type = GGML_TYPE_COUNT;
    for (int t = 0; t < GGML_TYPE_COUNT; t++) {
        const char * tn = ggml_type_name((ggml_type) t);
        if (tn && name == tn) { type = (ggml_type) t; break; }
    }
    if (type == GGML_TYPE_COUNT) { fprintf(stderr, "unknown ggml type %s\n", name.c_str()); return 2; }
    std::vector<char> raw = read_file(argv[1]);
    const int64_t n = (int64_t) (raw.size() / sizeof(float));
    const int64_t n_per_row = atoll(argv[2]);
    if (n % n_per_row != 0 || n_per_row % ggml_blck_size(type) != 0) { fprintf(stderr, "bad shape\n"); return 2; }
    const int64_t nrows = n / n_per_row;
    if (ggml_quantize_requires_imatrix(type)) { fprintf(stderr, "%s needs an imatrix\n", name.c_str()); return 2; }
    std::vector<char> q(ggml_row_size(type, n_per_row) * nrows);
    const size_t written = ggml_quantize_chunk(type, (const float *) raw.data(), q.data(), 0, nrows, n_per_row, nullptr);
    if (written != q.size()) { fprintf(stderr, "quantize wrote %zu of %zu bytes\n", written, q.size()); return 1; }
    write_file(argv[3], q.data(), q.size());
    std::vector<float> deq(n);
    ggml_get_type_traits(type)->to_float(q.data(), deq.data(), n);
    write_file(argv[4], deq.data(), deq.size() * sizeof(float));
    return 0;
}

static int cmd_tokenize(int argc, char ** argv) {
    if (argc < 2) { fprintf(stderr, "usage: tokenize MODEL TEXT_FILE\n"); return 2; }
    llama_model_params mp = llama_model_default_params();
    mp.vocab_only = true;
    llama_model * model = llama_model_load_from_file(argv[0], mp);
    if (!model) { fprintf(stderr, "cannot load %s\n", argv[0]); return 1; }
    std::vector<char> text = read_file(argv[1]);
    std::vector<llama_token> ids(text.size() + 16);
    const int n = llama_tokenize(llama_model_get_vocab(model), text.data(), (int32_t) text.size(), ids.data(),
                                 (int32_t) ids.size(), false, true);
    if (n < 0) { fprintf(stderr, "tokenize failed\n"); return 1; }
    for (int i = 0; i < n; i++) printf(i ? ",%d" : "%d", ids[i]);
    printf("\n");
    llama_model_free(model);
    return 0;
}

int main(int argc, char ** argv) {
    llama_log_set(quiet_log, nullptr);
    if (argc >= 2 && !strcmp(argv[1], "logits")) {
        llama_backend_init();
        int rc = cmd_logits(argc - 2, argv + 2);
        llama_backend_free();
        return rc;
    }
    if (argc >= 2 && !strcmp(argv[1], "quant")) return cmd_quant(argc - 2, argv + 2);
    if (argc >= 2 && !strcmp(argv[1], "tokenize")) {
        llama_backend_init();
        int rc = cmd_tokenize(argc - 2, argv + 2);
        llama_backend_free();
        return rc;
    }
    fprintf(stderr, "usage: %s logits|quant|tokenize ...\n", argv[0]);
    return 2;
}
