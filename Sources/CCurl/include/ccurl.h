// ccurl.h — small, non-variadic shims over libcurl for Swift.
//
// Swift cannot call C variadic functions such as curl_easy_setopt, so each option type gets a
// typed wrapper here. `ccurl_transfer` bundles one easy handle with the buffers its callbacks fill
// (response body and the Retry-After header), so Swift never has to pass closures into C.
#ifndef SAELABEL_CCURL_H
#define SAELABEL_CCURL_H

#include <curl/curl.h>
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

// --- typed wrappers over the variadic libcurl setters/getters ---
CURLcode ccurl_easy_setopt_long(CURL *handle, CURLoption option, long value);
CURLcode ccurl_easy_setopt_string(CURL *handle, CURLoption option, const char *value);
CURLcode ccurl_easy_setopt_pointer(CURL *handle, CURLoption option, void *value);
CURLcode ccurl_easy_setopt_off_t(CURL *handle, CURLoption option, curl_off_t value);
CURLMcode ccurl_multi_setopt_long(CURLM *handle, CURLMoption option, long value);
CURLcode ccurl_easy_getinfo_long(CURL *handle, CURLINFO info, long *value);
CURLcode ccurl_easy_getinfo_double(CURL *handle, CURLINFO info, double *value);
CURLcode ccurl_easy_getinfo_pointer(CURL *handle, CURLINFO info, void **value);

// --- one HTTP transfer with callback-filled buffers ---
#define CCURL_RETRY_AFTER_MAX 128

typedef struct ccurl_transfer {
    CURL *easy;
    struct curl_slist *headers;
    char *body;              // response body (not NUL-terminated); owned, freed by destroy
    size_t body_len;
    size_t body_cap;
    int out_of_memory;       // set when the body buffer could not grow (transfer is aborted)
    char retry_after[CCURL_RETRY_AFTER_MAX];  // value of the last response's Retry-After, or ""
    char errbuf[CURL_ERROR_SIZE];             // libcurl's error text for the last failure
} ccurl_transfer;

// Creates an easy handle with write/header callbacks, CURLOPT_NOSIGNAL, an error buffer and
// CURLOPT_PRIVATE pointing back at the transfer. Returns NULL on allocation failure.
ccurl_transfer *ccurl_transfer_create(void);
// Frees the easy handle (must already be removed from any multi handle), headers and buffers.
void ccurl_transfer_destroy(ccurl_transfer *transfer);
// Appends one request header line ("Name: value"). Returns 0 on success.
int ccurl_transfer_add_header(ccurl_transfer *transfer, const char *line);
// Configures a POST of `body` (copied by libcurl) to `url` with the headers added so far.
// timeout_ms bounds the whole attempt; connect_timeout_ms bounds connection setup.
CURLcode ccurl_transfer_prepare_post(ccurl_transfer *transfer, const char *url,
                                     const void *body, size_t body_len,
                                     long timeout_ms, long connect_timeout_ms);
// Response status of the finished transfer (0 if none was received).
// A GET of `url` (Batch API status and file contents).
CURLcode ccurl_transfer_prepare_get(ccurl_transfer *transfer, const char *url,
                                    long timeout_ms, long connect_timeout_ms);
long ccurl_transfer_status(ccurl_transfer *transfer);

// Reads the next CURLMSG_DONE message from the multi handle. Returns 1 and fills *transfer and
// *result when one was found (the transfer is the one set via CURLOPT_PRIVATE), 0 otherwise.
int ccurl_multi_next_done(CURLM *multi, ccurl_transfer **transfer, CURLcode *result);

// Names the calling thread (shown by top, gdb and perf); a no-op where unsupported.
void ccurl_set_thread_name(const char *name);

#ifdef __cplusplus
}
#endif

#endif
