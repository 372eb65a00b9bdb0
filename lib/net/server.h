/*
 * The server's hooks for its connections (lib/conn.c calls them).
 */
#ifndef IOLOOP_LIB_SERVER_H
#define IOLOOP_LIB_SERVER_H

#include <ioloop/server.h>

/* The connection is closing: it leaves the server's registry (server_send no longer finds it).
 * Loop thread. */
void ioloop__server_conn_closing(ioloop_conn_t *conn);

/* A connection of the server is gone (its on_close returned). Loop thread. */
void ioloop__server_conn_gone(struct ioloop_server *server);

#endif /* IOLOOP_LIB_SERVER_H */
