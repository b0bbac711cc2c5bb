#include "ccurl.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>
#ifdef __linux__
#include <errno.h>
#include <stdint.h>
#include <time.h>
#include <unistd.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
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

#ifdef __linux__

struct ccurl_loop {
    CURLM *multi;
    int epoll_fd;
    int wake_fd;           // eventfd; written by ccurl_loop_wakeup from any thread
    int timer_armed;       // libcurl asked for a timeout at timer_deadline_ns
    int64_t timer_deadline_ns;
};

static int64_t ccurl_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static int ccurl_socket_cb(CURL *easy, curl_socket_t s, int what, void *userp, void *socketp) {
    (void)easy; (void)socketp;
    ccurl_loop *loop = (ccurl_loop *)userp;
    if (what == CURL_POLL_REMOVE) {
        // The socket may already be closed, in which case the kernel dropped it from the set.
        epoll_ctl(loop->epoll_fd, EPOLL_CTL_DEL, s, NULL);
        return 0;
    }
    struct epoll_event ev;
    memset(&ev, 0, sizeof ev);
    ev.data.fd = s;
    if (what & CURL_POLL_IN) ev.events |= EPOLLIN;
    if (what & CURL_POLL_OUT) ev.events |= EPOLLOUT;
    if (epoll_ctl(loop->epoll_fd, EPOLL_CTL_MOD, s, &ev) != 0 && errno == ENOENT) {
        if (epoll_ctl(loop->epoll_fd, EPOLL_CTL_ADD, s, &ev) != 0) return -1;
    }
    return 0;
}

static int ccurl_timer_cb(CURLM *multi, long timeout_ms, void *userp) {
    (void)multi;
    ccurl_loop *loop = (ccurl_loop *)userp;
    if (timeout_ms < 0) {
        loop->timer_armed = 0;
    } else {
        loop->timer_armed = 1;
        loop->timer_deadline_ns = ccurl_now_ns() + (int64_t)timeout_ms * 1000000;
    }
    return 0;
}

ccurl_loop *ccurl_loop_create(CURLM *multi) {
    ccurl_loop *loop = calloc(1, sizeof(ccurl_loop));
    if (!loop) return NULL;
    loop->multi = multi;
    loop->epoll_fd = epoll_create1(EPOLL_CLOEXEC);
    loop->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    struct epoll_event ev;
    memset(&ev, 0, sizeof ev);
    ev.events = EPOLLIN;
    ev.data.fd = loop->wake_fd;
    if (loop->epoll_fd < 0 || loop->wake_fd < 0 || epoll_ctl(loop->epoll_fd, EPOLL_CTL_ADD, loop->wake_fd, &ev) != 0) {
        if (loop->epoll_fd >= 0) close(loop->epoll_fd);
        if (loop->wake_fd >= 0) close(loop->wake_fd);
        free(loop);
        return NULL;
    }
    curl_multi_setopt(multi, CURLMOPT_SOCKETFUNCTION, ccurl_socket_cb);
    curl_multi_setopt(multi, CURLMOPT_SOCKETDATA, (void *)loop);
    curl_multi_setopt(multi, CURLMOPT_TIMERFUNCTION, ccurl_timer_cb);
    curl_multi_setopt(multi, CURLMOPT_TIMERDATA, (void *)loop);
    return loop;
}

void ccurl_loop_destroy(ccurl_loop *loop) {
    if (!loop) return;
    // Transfers removed during curl_multi_cleanup may still report their sockets.
    curl_multi_setopt(loop->multi, CURLMOPT_SOCKETFUNCTION, NULL);
    curl_multi_setopt(loop->multi, CURLMOPT_TIMERFUNCTION, NULL);
    close(loop->epoll_fd);
    close(loop->wake_fd);
    free(loop);
}

void ccurl_loop_wakeup(ccurl_loop *loop) {
    uint64_t one = 1;
    // A full counter (EAGAIN) already means "wake up".
    ssize_t written = write(loop->wake_fd, &one, sizeof one);
    (void)written;
}

CURLMcode ccurl_loop_run_once(ccurl_loop *loop, int max_wait_ms) {
    int wait_ms = max_wait_ms;
    if (loop->timer_armed) {
        int64_t left_ns = loop->timer_deadline_ns - ccurl_now_ns();
        int64_t left_ms = left_ns <= 0 ? 0 : (left_ns + 999999) / 1000000;
        if (left_ms < wait_ms) wait_ms = (int)left_ms;
    }
    struct epoll_event events[64];
    int n = epoll_wait(loop->epoll_fd, events, 64, wait_ms);
    if (n < 0 && errno != EINTR) return CURLM_INTERNAL_ERROR;
    int running = 0;
    CURLMcode mc = CURLM_OK;
    for (int i = 0; i < n; i++) {
        int fd = events[i].data.fd;
        if (fd == loop->wake_fd) {
            uint64_t count;
            ssize_t got = read(loop->wake_fd, &count, sizeof count);
            (void)got;
            continue;
        }
        int flags = 0;
        if (events[i].events & EPOLLIN) flags |= CURL_CSELECT_IN;
        if (events[i].events & EPOLLOUT) flags |= CURL_CSELECT_OUT;
        if (events[i].events & (EPOLLERR | EPOLLHUP)) flags |= CURL_CSELECT_ERR;
        mc = curl_multi_socket_action(loop->multi, fd, flags, &running);
        // A socket closed while handling an earlier event of this batch is no error.
        if (mc == CURLM_BAD_SOCKET) mc = CURLM_OK;
        if (mc != CURLM_OK) return mc;
    }
    if (loop->timer_armed && loop->timer_deadline_ns <= ccurl_now_ns()) {
        loop->timer_armed = 0;
        mc = curl_multi_socket_action(loop->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    }
    return mc;
}

#else  // no epoll: poll every transfer per wake-up

struct ccurl_loop {
    CURLM *multi;
};

ccurl_loop *ccurl_loop_create(CURLM *multi) {
    ccurl_loop *loop = calloc(1, sizeof(ccurl_loop));
    if (loop) loop->multi = multi;
    return loop;
}

void ccurl_loop_destroy(ccurl_loop *loop) { free(loop); }

void ccurl_loop_wakeup(ccurl_loop *loop) { curl_multi_wakeup(loop->multi); }

CURLMcode ccurl_loop_run_once(ccurl_loop *loop, int max_wait_ms) {
    int running = 0;
    CURLMcode mc = curl_multi_perform(loop->multi, &running);
    if (mc != CURLM_OK) return mc;
    return curl_multi_poll(loop->multi, NULL, 0, max_wait_ms, NULL);
}

#endif

void ccurl_set_thread_name(const char *name) {
#ifdef __linux__
    prctl(PR_SET_NAME, name, 0, 0, 0);
#else
    (void)name;
#endif
}
