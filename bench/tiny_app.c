/*
 * tiny_app: the HTTP app behind the proxies in bench/proxy.sh.
 *
 *   tiny_app [--cpu N] [ADDR]
 *
 * Answers every request with "200 OK" and a 14-byte body, keeping the
 * connection alive. Without ADDR it serves the listening socket it inherited
 * by systemd socket activation (LISTEN_FDS=1 and LISTEN_PID = its pid: fd 3),
 * the way berth starts HTTP apps; with ADDR it binds it itself: a path (a Unix
 * socket, made mode 0666) or HOST:PORT (IPv4). --cpu pins it to CPU N, so the
 * same binary lands on the same CPU whoever starts it (berth's app processes
 * inherit the front end's affinity).
 *
 * One thread, epoll, non-blocking sockets: a few microseconds of CPU per
 * request, so that the proxy in front of it, not the app, is what a benchmark
 * measures. It reads requests (several per read when pipelined), skips a body
 * of Content-Length bytes, refuses chunked request bodies (400, close), and
 * honours "Connection: close" and HTTP/1.0 without keep-alive. Bench code, not
 * a server for the world: heads above 16 KiB are refused (431, close).
 *
 * SIGUSR1 makes it print to stderr how many connections it accepted and how
 * many requests it answered: how well the proxy in front keeps its upstream
 * connections alive.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#define HEAD_MAX 16384
#define OUT_MAX 65536

static const char RESPONSE[] =
    "HTTP/1.1 200 OK\r\n"
    "Content-Type: text/plain\r\n"
    "Content-Length: 14\r\n"
    "\r\n"
    "Hello, world!\n";
static const char TOO_LARGE[] =
    "HTTP/1.1 431 Request Header Fields Too Large\r\n"
    "Content-Length: 0\r\nConnection: close\r\n\r\n";
static const char BAD[] =
    "HTTP/1.1 400 Bad Request\r\n"
    "Content-Length: 0\r\nConnection: close\r\n\r\n";

static unsigned long long accepted, answered;
static volatile sig_atomic_t report;

static void on_usr1(int sig) {
    (void)sig;
    report = 1;
}

struct conn {
    int fd;
    char in[HEAD_MAX];
    size_t in_len;
    unsigned long long skip; /* body bytes still to discard */
    char out[OUT_MAX];
    size_t out_off, out_len;
    int closing; /* close once out is written */
    int want_out; /* EPOLLOUT registered */
};

static void die(const char *what) {
    perror(what);
    exit(1);
}

/* The value of header NAME in the head [h, end), or NULL; *len gets its length. */
static const char *header(const char *h, const char *end, const char *name, size_t *len) {
    size_t n = strlen(name);
    const char *line = memchr(h, '\n', end - h);
    while (line && line + 1 < end) {
        line++;
        const char *eol = memchr(line, '\n', end - line);
        if (!eol)
            break;
        if ((size_t)(eol - line) > n && line[n] == ':' && strncasecmp(line, name, n) == 0) {
            const char *v = line + n + 1;
            while (v < eol && (*v == ' ' || *v == '\t'))
                v++;
            const char *ve = eol;
            while (ve > v && (ve[-1] == '\r' || ve[-1] == ' ' || ve[-1] == '\t'))
                ve--;
            *len = ve - v;
            return v;
        }
        line = eol;
    }
    return NULL;
}

static int has_token(const char *v, size_t len, const char *token) {
    size_t n = strlen(token);
    for (size_t i = 0; i + n <= len; i++)
        if (strncasecmp(v + i, token, n) == 0)
            return 1;
    return 0;
}

static void queue(struct conn *c, const char *bytes, size_t n) {
    if (c->out_len + n > OUT_MAX) {
        /* More pipelined requests than fit: answer the rest after a write. */
        c->closing = 1;
        return;
    }
    memcpy(c->out + c->out_len, bytes, n);
    c->out_len += n;
}

/* Answer every complete request in c->in. */
static void parse(struct conn *c) {
    size_t start = 0;
    while (!c->closing) {
        if (c->skip) {
            size_t have = c->in_len - start;
            size_t n = c->skip < have ? (size_t)c->skip : have;
            c->skip -= n;
            start += n;
            if (c->skip)
                break;
        }
        char *h = c->in + start;
        size_t have = c->in_len - start;
        char *end = memmem(h, have, "\r\n\r\n", 4);
        if (!end) {
            if (have == HEAD_MAX) {
                queue(c, TOO_LARGE, sizeof TOO_LARGE - 1);
                c->closing = 1;
            }
            break;
        }
        end += 4;
        /* Room for the response, or wait for the output to drain. */
        if (c->out_len + sizeof RESPONSE - 1 > OUT_MAX)
            break;
        size_t len;
        const char *v;
        if ((v = header(h, end, "Transfer-Encoding", &len))) {
            queue(c, BAD, sizeof BAD - 1);
            c->closing = 1;
            break;
        }
        if ((v = header(h, end, "Content-Length", &len)))
            c->skip = strtoull(v, NULL, 10);
        int keep = 1;
        const char *eol = memchr(h, '\n', end - h);
        int http10 = eol && eol - h >= 9 && memcmp(eol - 9, "HTTP/1.0", 8) == 0;
        v = header(h, end, "Connection", &len);
        if (v && has_token(v, len, "close"))
            keep = 0;
        else if (http10 && !(v && has_token(v, len, "keep-alive")))
            keep = 0;
        queue(c, RESPONSE, sizeof RESPONSE - 1);
        answered++;
        start = end - c->in;
        if (!keep)
            c->closing = 1;
    }
    memmove(c->in, c->in + start, c->in_len - start);
    c->in_len -= start;
}

static void drop(int ep, struct conn *c) {
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    free(c);
}

/* Write what is queued; 0: keep the connection, -1: it is gone. While output
 * waits, the connection is watched for writability only (no more reading):
 * a client that does not read its answers stops being read. */
static int flush(int ep, struct conn *c) {
    while (c->out_off < c->out_len) {
        ssize_t n = write(c->fd, c->out + c->out_off, c->out_len - c->out_off);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN)
                break;
            return -1;
        }
        c->out_off += n;
    }
    if (c->out_off == c->out_len) {
        c->out_off = c->out_len = 0;
        if (c->closing)
            return -1;
    }
    int want = c->out_len > 0;
    if (want != c->want_out) {
        struct epoll_event ev = {.events = want ? EPOLLOUT : EPOLLIN, .data.ptr = c};
        epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
        c->want_out = want;
    }
    return 0;
}

static void serve(int ep, struct conn *c, unsigned events) {
    if (!(events & EPOLLOUT)) {
        /* Level-triggered: one read, epoll says when there is more. */
        ssize_t n;
        do
            n = read(c->fd, c->in + c->in_len, HEAD_MAX - c->in_len);
        while (n < 0 && errno == EINTR);
        if (n < 0 && errno == EAGAIN)
            return;
        if (n <= 0) {
            drop(ep, c);
            return;
        }
        c->in_len += n;
    }
    /* Answer what is complete; when the output had no room for every
     * answer, go on once it drained. */
    for (;;) {
        size_t before = c->in_len;
        parse(c);
        if (flush(ep, c) < 0) {
            drop(ep, c);
            return;
        }
        if (c->out_len > 0 || c->in_len == before)
            return;
    }
}

static int listener(const char *addr) {
    int fd;
    if (addr[0] == '/') {
        struct sockaddr_un un = {.sun_family = AF_UNIX};
        if (strlen(addr) >= sizeof un.sun_path) {
            fprintf(stderr, "tiny_app: socket path too long: %s\n", addr);
            exit(1);
        }
        strcpy(un.sun_path, addr);
        unlink(addr);
        if ((fd = socket(AF_UNIX, SOCK_STREAM, 0)) < 0)
            die("socket");
        if (bind(fd, (struct sockaddr *)&un, sizeof un) < 0)
            die(addr);
        if (chmod(addr, 0666) < 0)
            die(addr);
    } else {
        char host[64];
        const char *colon = strrchr(addr, ':');
        if (!colon || (size_t)(colon - addr) >= sizeof host) {
            fprintf(stderr, "tiny_app: not a path or HOST:PORT: %s\n", addr);
            exit(1);
        }
        memcpy(host, addr, colon - addr);
        host[colon - addr] = 0;
        struct sockaddr_in in = {.sin_family = AF_INET, .sin_port = htons(atoi(colon + 1))};
        if (inet_pton(AF_INET, host, &in.sin_addr) != 1) {
            fprintf(stderr, "tiny_app: not an IPv4 address: %s\n", host);
            exit(1);
        }
        if ((fd = socket(AF_INET, SOCK_STREAM, 0)) < 0)
            die("socket");
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (bind(fd, (struct sockaddr *)&in, sizeof in) < 0)
            die(addr);
    }
    if (listen(fd, 4096) < 0)
        die("listen");
    return fd;
}

/* fd 3, if systemd-style socket activation handed it to this process. */
static int activated(void) {
    const char *fds = getenv("LISTEN_FDS"), *pid = getenv("LISTEN_PID");
    if (!fds || !pid || atoi(fds) != 1 || atol(pid) != (long)getpid()) {
        fprintf(stderr, "tiny_app: no ADDR and no socket activation (LISTEN_FDS=1, LISTEN_PID=%ld)\n",
                (long)getpid());
        exit(1);
    }
    return 3;
}

int main(int argc, char **argv) {
    int i = 1;
    if (i + 1 < argc && strcmp(argv[i], "--cpu") == 0) {
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(atoi(argv[i + 1]), &set);
        if (sched_setaffinity(0, sizeof set, &set) < 0)
            die("sched_setaffinity");
        i += 2;
    }
    if (i + 1 < argc) {
        fprintf(stderr, "usage: tiny_app [--cpu N] [/unix/path | HOST:PORT]\n");
        return 2;
    }
    int lfd = i < argc ? listener(argv[i]) : activated();
    signal(SIGPIPE, SIG_IGN);
    /* SIGUSR1 is taken only inside epoll_pwait, which it interrupts. */
    struct sigaction sa = {.sa_handler = on_usr1};
    sigaction(SIGUSR1, &sa, NULL);
    sigset_t usr1, waiting;
    sigemptyset(&usr1);
    sigaddset(&usr1, SIGUSR1);
    sigprocmask(SIG_BLOCK, &usr1, &waiting);
    sigdelset(&waiting, SIGUSR1);
    int fl = fcntl(lfd, F_GETFL);
    if (fl < 0 || fcntl(lfd, F_SETFL, fl | O_NONBLOCK) < 0)
        die("fcntl");
    int ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0)
        die("epoll_create1");
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev) < 0)
        die("epoll_ctl");
    struct epoll_event evs[256];
    for (;;) {
        int n = epoll_pwait(ep, evs, 256, -1, &waiting);
        if (report) {
            report = 0;
            fprintf(stderr, "tiny_app: %llu connections accepted, %llu requests answered\n", accepted,
                    answered);
        }
        if (n < 0) {
            if (errno == EINTR)
                continue;
            die("epoll_pwait");
        }
        for (int k = 0; k < n; k++) {
            if (evs[k].data.ptr) {
                serve(ep, evs[k].data.ptr, evs[k].events);
                continue;
            }
            for (;;) {
                int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
                if (fd < 0) {
                    if (errno == EINTR || errno == ECONNABORTED)
                        continue;
                    if (errno != EAGAIN)
                        perror("accept4");
                    break;
                }
                int one = 1; /* fails harmlessly on a Unix socket */
                setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                struct conn *c = calloc(1, sizeof *c);
                if (!c) {
                    close(fd);
                    continue;
                }
                c->fd = fd;
                accepted++;
                struct epoll_event cev = {.events = EPOLLIN, .data.ptr = c};
                if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &cev) < 0) {
                    close(fd);
                    free(c);
                }
            }
        }
    }
}
