/* Lean load generator and floor server for bench/agent/blocking.py.
 *
 * Why C: on this 2-core machine the watchers share the agent's cores, and
 * the Python watchers need 140-270 ms of CPU to take in 10,000 answers, more
 * than the whole 100 ms target. These take ~40 ms (mostly the kernel's
 * recv), so the figure is the agent's, not the load generator's.
 *
 *   watchers watch HOST PORT CLIENTS SERVICE GZIP
 *     Opens CLIENTS keep-alive connections and prints "connected". For each
 *     "ask INDEX" line on stdin it sends
 *       GET /v1/health/service/SERVICE?index=INDEX&wait=5m
 *     on every connection (with Accept-Encoding: gzip when GZIP is 1), prints
 *     "asked", waits for every answer (status line and Content-Length only:
 *     bodies are counted, not parsed or decompressed) and prints one line:
 *       answers CPU_MS BYTES T1 T2 ... (CLOCK_MONOTONIC seconds of each
 *       answer's last byte, the clock Python's time.monotonic() reads)
 *     or "error ..." for a non-200 answer or a closed connection.
 *
 *   watchers serve CLIENTS ANSWER_BYTES THREADS
 *     The floor: a server that does nothing but write one prebuilt answer.
 *     Listens on 127.0.0.1 (port printed as "port N"), accepts CLIENTS
 *     connections; then, each round, reads one request from every connection
 *     (up to its blank line), prints "parked", waits for "go" on stdin and
 *     writes the same 200 answer of ANSWER_BYTES (head included) to every connection
 *     from THREADS threads, and prints "sent WALL_MS USER_MS SYS_MS".
 *
 * Build: cc -O2 -pthread -o watchers watchers.c (blocking.py does this).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define HEAD_MAX 4096

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static double cpu_ms(void) {
    struct rusage u;
    getrusage(RUSAGE_SELF, &u);
    return (u.ru_utime.tv_sec + u.ru_stime.tv_sec) * 1e3 +
           (u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e3;
}

static void fail(const char *what) {
    printf("error %s\n", what);
    fflush(stdout);
    exit(1);
}

static void die(const char *what) {  /* a failed call: errno says why */
    printf("error %s: %s\n", what, strerror(errno));
    fflush(stdout);
    exit(1);
}

static void *alloc(size_t count, size_t size) {
    void *p = calloc(count, size);
    if (p == NULL) fail("out of memory");
    return p;
}

static void raise_nofile(void) {
    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
}

static void write_all(int fd, const char *data, size_t len) {
    while (len > 0) {
        ssize_t n = write(fd, data, len);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && errno == EAGAIN) {  /* a full socket buffer: wait for room */
            usleep(100);
            continue;
        }
        if (n <= 0) die("write");
        data += n;
        len -= (size_t)n;
    }
}

/* ---- watch ---------------------------------------------------------------- */

typedef struct {
    int fd;
    char head[HEAD_MAX];
    size_t head_len;  /* bytes of head[] filled while the headers are incomplete */
    long need;        /* bytes of the whole answer once its headers are in; -1 before */
    long got;
    int status;
    double done;      /* arrival of its last byte; 0 while waiting */
} Conn;

/* Headers complete in c->head: status and Content-Length. */
static int parse_head(Conn *c) {
    char *end = memmem(c->head, c->head_len, "\r\n\r\n", 4);
    if (end == NULL) return 0;
    c->status = atoi(c->head + 9);  /* "HTTP/1.1 200" */
    long length = -1;
    for (char *p = c->head; p < end; p++) {
        if ((p == c->head || p[-1] == '\n') && strncasecmp(p, "content-length:", 15) == 0)
            length = atol(p + 15);
    }
    if (length < 0) fail("an answer without Content-Length");
    c->need = (end + 4 - c->head) + length;
    return 1;
}

/* Reads what is there; returns 1 when the answer is complete. A connection
 * whose answer is complete must stay silent until the next request: any byte
 * or EOF then is an error (level-triggered epoll reports it at once). */
static int take(Conn *c, char *scratch, size_t size) {
    for (;;) {
        ssize_t n = read(c->fd, scratch, size);
        if (n < 0 && (errno == EAGAIN || errno == EINTR)) return 0;
        if (n < 0) die("read");
        if (n == 0) fail("the server closed a connection");
        if (c->done != 0) fail("bytes after a whole answer (an answer written twice?)");
        if (c->need < 0) {
            size_t room = HEAD_MAX - c->head_len;
            size_t copy = (size_t)n < room ? (size_t)n : room;
            memcpy(c->head + c->head_len, scratch, copy);
            c->head_len += copy;
            if (!parse_head(c) && c->head_len == HEAD_MAX) fail("an answer head over 4 KiB");
        }
        c->got += n;
        if (c->need >= 0 && c->got >= c->need) {
            if (c->got > c->need) fail("more bytes than one answer");
            return 1;
        }
    }
}

static int watch(const char *host, int port, int clients, const char *service, int gzip) {
    Conn *conns = alloc((size_t)clients, sizeof(Conn));
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (inet_pton(AF_INET, host, &addr.sin_addr) != 1) fail("HOST is not an IPv4 address");
    int ep = epoll_create1(0);
    for (int i = 0; i < clients; i++) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        if (fd < 0) die("socket");
        if (connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0) die("connect");
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        fcntl(fd, F_SETFL, O_NONBLOCK);
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
        epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
        conns[i].fd = fd;
    }
    printf("connected\n");
    fflush(stdout);
    static char scratch[1 << 16];
    char line[256];
    struct epoll_event events[1024];
    while (fgets(line, sizeof line, stdin) != NULL) {
        long index;
        if (sscanf(line, "ask %ld", &index) != 1) continue;
        char request[512];
        int len = snprintf(request, sizeof request,
                           "GET /v1/health/service/%s?index=%ld&wait=5m HTTP/1.1\r\n"
                           "Host: %s:%d\r\n%s\r\n",
                           service, index, host, port, gzip ? "Accept-Encoding: gzip\r\n" : "");
        if (len < 0 || (size_t)len >= sizeof request) fail("the request line is too long");
        for (int i = 0; i < clients; i++) {
            Conn *c = &conns[i];
            c->head_len = 0, c->need = -1, c->got = 0, c->done = 0;
            write_all(c->fd, request, (size_t)len);
        }
        printf("asked\n");
        fflush(stdout);
        double cpu0 = cpu_ms();
        long bytes = 0;
        for (int left = clients; left > 0;) {
            int n = epoll_wait(ep, events, 1024, 120000);
            if (n < 0 && errno == EINTR) continue;
            if (n < 0) die("epoll_wait");
            if (n == 0) fail("no answer for 120 s");
            for (int k = 0; k < n; k++) {
                Conn *c = &conns[events[k].data.u32];
                if (take(c, scratch, sizeof scratch)) {
                    c->done = now();
                    bytes += c->got;
                    left--;
                    if (c->status != 200) {
                        printf("error HTTP %d\n", c->status);
                        fflush(stdout);
                        exit(1);
                    }
                }
            }
        }
        printf("answers %.1f %ld", cpu_ms() - cpu0, bytes);
        for (int i = 0; i < clients; i++) printf(" %.6f", conns[i].done);
        printf("\n");
        fflush(stdout);
    }
    return 0;
}

/* ---- serve (the floor) ---------------------------------------------------- */

static int *served;
static int served_count, sending_threads;
static char *answer;
static size_t answer_len;

static void *send_share(void *arg) {
    long k = (long)arg;
    for (int i = (int)k; i < served_count; i += sending_threads) write_all(served[i], answer, answer_len);
    return NULL;
}

/* Reads one whole request (up to its blank line) from each connection. */
static void read_requests(int clients) {
    static char buf[HEAD_MAX];
    for (int i = 0; i < clients; i++) {
        size_t len = 0;
        while (len < 4 || memcmp(buf + len - 4, "\r\n\r\n", 4) != 0) {
            ssize_t n = read(served[i], buf + len, 1);  /* byte by byte: never past the request */
            if (n < 0) die("read request");
            if (n == 0) fail("a watcher closed its connection");
            len++;
            if (len == sizeof buf) fail("request too long");
        }
    }
}

static int serve(int clients, long total, int threads) {
    int ls = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (bind(ls, (struct sockaddr *)&addr, sizeof addr) != 0) die("bind");
    if (listen(ls, 4096) != 0) die("listen");
    socklen_t alen = sizeof addr;
    getsockname(ls, (struct sockaddr *)&addr, &alen);
    printf("port %d\n", ntohs(addr.sin_port));
    fflush(stdout);
    served = alloc((size_t)clients, sizeof(int));
    for (int i = 0; i < clients; i++) {
        served[i] = accept(ls, NULL, NULL);
        if (served[i] < 0) die("accept");
        setsockopt(served[i], IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
    served_count = clients, sending_threads = threads;
    /* The head's length depends on the body's digits: settle it first. */
    char head[256];
    long body = total;
    int hlen = 0;
    for (int round = 0; round < 3; round++) {
        hlen = snprintf(head, sizeof head,
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                        "x-consul-index: 1\r\ncontent-length: %ld\r\n\r\n", body);
        body = total - hlen > 1 ? total - hlen : 1;
    }
    hlen = snprintf(head, sizeof head,
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                    "x-consul-index: 1\r\ncontent-length: %ld\r\n\r\n", body);
    answer_len = (size_t)hlen + (size_t)body;
    answer = alloc(answer_len, 1);
    memcpy(answer, head, (size_t)hlen);
    memset(answer + hlen, 'x', (size_t)body);
    char line[64];
    for (;;) {
        read_requests(clients);
        printf("parked\n");
        fflush(stdout);
        if (fgets(line, sizeof line, stdin) == NULL) return 0;
        struct rusage u0, u1;
        getrusage(RUSAGE_SELF, &u0);
        double t0 = now();
        pthread_t others[16];
        for (long k = 1; k < threads; k++)
            if (pthread_create(&others[k], NULL, send_share, (void *)k) != 0) fail("pthread_create");
        send_share((void *)0);
        for (long k = 1; k < threads; k++) pthread_join(others[k], NULL);
        double wall = (now() - t0) * 1e3;
        getrusage(RUSAGE_SELF, &u1);
        printf("sent %.1f %.1f %.1f\n", wall,
               (u1.ru_utime.tv_sec - u0.ru_utime.tv_sec) * 1e3 +
                   (u1.ru_utime.tv_usec - u0.ru_utime.tv_usec) / 1e3,
               (u1.ru_stime.tv_sec - u0.ru_stime.tv_sec) * 1e3 +
                   (u1.ru_stime.tv_usec - u0.ru_stime.tv_usec) / 1e3);
        fflush(stdout);
    }
}

int main(int argc, char **argv) {
    raise_nofile();
    if (argc == 7 && strcmp(argv[1], "watch") == 0)
        return watch(argv[2], atoi(argv[3]), atoi(argv[4]), argv[5], atoi(argv[6]));
    if (argc == 5 && strcmp(argv[1], "serve") == 0) {
        int threads = atoi(argv[4]);
        if (threads < 1 || threads > 16) threads = 1;
        return serve(atoi(argv[2]), atol(argv[3]), threads);
    }
    fprintf(stderr,
            "usage: watchers watch HOST PORT CLIENTS SERVICE GZIP\n"
            "       watchers serve CLIENTS ANSWER_BYTES THREADS\n");
    return 2;
}
