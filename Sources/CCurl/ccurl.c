#include "ccurl.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>
#ifdef __linux__
#include <sys/prctl.h>
#endif

CURLcode ccurl_easy_setopt_long(CURL *handle, CURLoption option, long value) {
    return curl_easy_setopt(handle, option, value);
}

CURLcode ccurl_easy_setopt_string(CURL *handle, CURLoption option, const char *value) {
    return curl_easy_setopt(handle, option, value);
}

CURLcode ccurl_easy_setopt_pointer(CURL *handle, CURLoption option, void *value) {
    return curl_easy_setopt(handle, option, value);
}

CURLcode ccurl_easy_setopt_off_t(CURL *handle, CURLoption option, curl_off_t value) {
    return curl_easy_setopt(handle, option, value);
}

CURLMcode ccurl_multi_setopt_long(CURLM *handle, CURLMoption option, long value) {
    return curl_multi_setopt(handle, option, value);
}

CURLcode ccurl_easy_getinfo_long(CURL *handle, CURLINFO info, long *value) {
    return curl_easy_getinfo(handle, info, value);
}

CURLcode ccurl_easy_getinfo_double(CURL *handle, CURLINFO info, double *value) {
    return curl_easy_getinfo(handle, info, value);
}

CURLcode ccurl_easy_getinfo_pointer(CURL *handle, CURLINFO info, void **value) {
    return curl_easy_getinfo(handle, info, value);
}

static size_t ccurl_write_cb(char *data, size_t size, size_t count, void *userdata) {
    ccurl_transfer *t = (ccurl_transfer *)userdata;
    size_t n = size * count;
    if (n == 0) return 0;
    if (t->body_len + n > t->body_cap) {
        size_t cap = t->body_cap ? t->body_cap : 4096;
        while (cap < t->body_len + n) cap *= 2;
        char *grown = realloc(t->body, cap);
        if (!grown) {
            t->out_of_memory = 1;
            return 0;  // makes libcurl fail the transfer with CURLE_WRITE_ERROR
        }
        t->body = grown;
        t->body_cap = cap;
    }
    memcpy(t->body + t->body_len, data, n);
    t->body_len += n;
    return n;
}

static size_t ccurl_header_cb(char *data, size_t size, size_t count, void *userdata) {
    ccurl_transfer *t = (ccurl_transfer *)userdata;
    size_t n = size * count;
    // A new status line starts a new response (e.g. after "100 Continue"): forget older headers.
    if (n >= 5 && strncmp(data, "HTTP/", 5) == 0) {
        t->retry_after[0] = '\0';
        return n;
    }
    static const char name[] = "retry-after:";
    size_t name_len = sizeof(name) - 1;
    if (n > name_len && strncasecmp(data, name, name_len) == 0) {
        const char *v = data + name_len;
        const char *end = data + n;
        while (v < end && (*v == ' ' || *v == '\t')) v++;
        while (end > v && (end[-1] == '\r' || end[-1] == '\n' || end[-1] == ' ' || end[-1] == '\t')) end--;
        size_t len = (size_t)(end - v);
        if (len >= CCURL_RETRY_AFTER_MAX) len = CCURL_RETRY_AFTER_MAX - 1;
        memcpy(t->retry_after, v, len);
        t->retry_after[len] = '\0';
    }
    return n;
}

ccurl_transfer *ccurl_transfer_create(void) {
    ccurl_transfer *t = calloc(1, sizeof(ccurl_transfer));
    if (!t) return NULL;
    t->easy = curl_easy_init();
    if (!t->easy) {
        free(t);
        return NULL;
    }
    curl_easy_setopt(t->easy, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(t->easy, CURLOPT_ERRORBUFFER, t->errbuf);
    curl_easy_setopt(t->easy, CURLOPT_WRITEFUNCTION, ccurl_write_cb);
    curl_easy_setopt(t->easy, CURLOPT_WRITEDATA, (void *)t);
    curl_easy_setopt(t->easy, CURLOPT_HEADERFUNCTION, ccurl_header_cb);
    curl_easy_setopt(t->easy, CURLOPT_HEADERDATA, (void *)t);
    curl_easy_setopt(t->easy, CURLOPT_PRIVATE, (void *)t);
    return t;
}

void ccurl_transfer_destroy(ccurl_transfer *t) {
    if (!t) return;
    if (t->easy) curl_easy_cleanup(t->easy);
    if (t->headers) curl_slist_free_all(t->headers);
    free(t->body);
    free(t);
}

int ccurl_transfer_add_header(ccurl_transfer *t, const char *line) {
    struct curl_slist *list = curl_slist_append(t->headers, line);
    if (!list) return 1;
    t->headers = list;
    return 0;
}

CURLcode ccurl_transfer_prepare_post(ccurl_transfer *t, const char *url,
                                     const void *body, size_t body_len,
                                     long timeout_ms, long connect_timeout_ms) {
    CURLcode rc;
    if ((rc = curl_easy_setopt(t->easy, CURLOPT_URL, url)) != CURLE_OK) return rc;
    if ((rc = curl_easy_setopt(t->easy, CURLOPT_POST, 1L)) != CURLE_OK) return rc;
    // Size first, then COPYPOSTFIELDS: libcurl copies exactly body_len bytes, so Swift's buffer
    // need not outlive this call and embedded NULs are fine.
    if ((rc = curl_easy_setopt(t->easy, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)body_len)) != CURLE_OK) return rc;
    if ((rc = curl_easy_setopt(t->easy, CURLOPT_COPYPOSTFIELDS, body_len ? body : "")) != CURLE_OK) return rc;
    if ((rc = curl_easy_setopt(t->easy, CURLOPT_HTTPHEADER, t->headers)) != CURLE_OK) return rc;
    if ((rc = curl_easy_setopt(t->easy, CURLOPT_TIMEOUT_MS, timeout_ms)) != CURLE_OK) return rc;
    if ((rc = curl_easy_setopt(t->easy, CURLOPT_CONNECTTIMEOUT_MS, connect_timeout_ms)) != CURLE_OK) return rc;
    return CURLE_OK;
}

CURLcode ccurl_transfer_prepare_get(ccurl_transfer *t, const char *url,
                                    long timeout_ms, long connect_timeout_ms) {
    CURLcode rc;
    if ((rc = curl_easy_setopt(t->easy, CURLOPT_URL, url)) != CURLE_OK) return rc;
    if ((rc = curl_easy_setopt(t->easy, CURLOPT_HTTPGET, 1L)) != CURLE_OK) return rc;
    if ((rc = curl_easy_setopt(t->easy, CURLOPT_HTTPHEADER, t->headers)) != CURLE_OK) return rc;
    if ((rc = curl_easy_setopt(t->easy, CURLOPT_TIMEOUT_MS, timeout_ms)) != CURLE_OK) return rc;
    if ((rc = curl_easy_setopt(t->easy, CURLOPT_CONNECTTIMEOUT_MS, connect_timeout_ms)) != CURLE_OK) return rc;
    return CURLE_OK;
}

long ccurl_transfer_status(ccurl_transfer *t) {
    long status = 0;
    if (curl_easy_getinfo(t->easy, CURLINFO_RESPONSE_CODE, &status) != CURLE_OK) return 0;
    return status;
}

int ccurl_multi_next_done(CURLM *multi, ccurl_transfer **transfer, CURLcode *result) {
    int queued = 0;
    CURLMsg *msg;
    while ((msg = curl_multi_info_read(multi, &queued)) != NULL) {
        if (msg->msg != CURLMSG_DONE) continue;
        void *priv = NULL;
        curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, &priv);
        *transfer = (ccurl_transfer *)priv;
        *result = msg->data.result;
        return 1;
    }
    return 0;
}

void ccurl_set_thread_name(const char *name) {
#ifdef __linux__
    prctl(PR_SET_NAME, name, 0, 0, 0);
#else
    (void)name;
#endif
}
