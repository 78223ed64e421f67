/*
 * weft_serve.c -- weft::serve: a listening socket whose connections each run
 * `handler sock` in their own coroutine ::weft::clients::host:port.  With
 * -certfile and -keyfile each connection is made a TLS server channel by the
 * tls package (Debian's tcl-tls: `tls::import`) before its handler runs; the
 * handshake then happens in the handler's first reads and writes, which wait
 * like any other.
 */
#include "weft_tcl.h"

#include <string.h>
#include <unistd.h>

typedef struct Server {
    WeftInterp *wi;
    Tcl_Interp *interp;
    Tcl_Obj *handler;
    Tcl_Obj *tlsArgs;   /* {-server 1 -certfile F -keyfile K} for tls::import, or NULL */
    int quiet;
} Server;

static void
FreeServer(ClientData cd)
{
    Server *srv = (Server *) cd;

    Tcl_DecrRefCount(srv->handler);
    if (srv->tlsArgs != NULL) {
        Tcl_DecrRefCount(srv->tlsArgs);
    }
    Tcl_Release(srv->wi);
    ckfree((char *) srv);
}

/* Coroutine name; IPv6 colons become dots so the name stays one word. */
static Tcl_Obj *
ClientName(Tcl_Interp *interp, const char *host, int port)
{
    Tcl_Obj *name = Tcl_NewStringObj("::weft::clients::", -1);
    const char *p;
    int n;

    for (p = host; *p; p++) {
        Tcl_AppendToObj(name, *p == ':' ? "." : p, 1);
    }
    Tcl_AppendPrintfToObj(name, ":%d", port);
    for (n = 2; Tcl_FindCommand(interp, Tcl_GetString(name), NULL, 0) != NULL
            && n < 1000000; n++) {
        int len;
        const char *s = Tcl_GetStringFromObj(name, &len);
        const char *hash = strrchr(s, '#');
        if (n > 2 && hash != NULL) {
            Tcl_SetObjLength(name, (int) (hash - s));
        }
        Tcl_AppendPrintfToObj(name, "#%d", n);
    }
    return name;
}

/*
 * Stack TLS on a new connection (tls::import; it loads the certificate and
 * key for each connection, as tcl-tls does).  TCL_ERROR is left for
 * bgerror; the caller then closes the socket.
 */
static int
ImportTls(Server *srv, const char *sock)
{
    Tcl_Obj *cmd = Tcl_NewListObj(0, NULL);
    int code;

    Tcl_IncrRefCount(cmd);
    Tcl_ListObjAppendElement(NULL, cmd, Tcl_NewStringObj("::tls::import", -1));
    Tcl_ListObjAppendElement(NULL, cmd, Tcl_NewStringObj(sock, -1));
    Tcl_ListObjAppendList(NULL, cmd, srv->tlsArgs);
    code = Tcl_EvalObjEx(srv->interp, cmd, TCL_EVAL_GLOBAL);
    Tcl_DecrRefCount(cmd);
    if (code == TCL_OK) {
        Tcl_ResetResult(srv->interp);
    }
    return code;
}

static void
Accept(ClientData cd, Tcl_Channel chan, char *host, int port)
{
    Server *srv = (Server *) cd;
    Tcl_Interp *interp = srv->interp;
    Tcl_Obj *objv[6];
    const char *sock;
    int i, code;

    if (srv->wi->deleted) {
        Tcl_Close(NULL, chan);
        return;
    }
    Tcl_RegisterChannel(interp, chan);
    sock = Tcl_GetChannelName(chan);
    Tcl_SetChannelOption(NULL, chan, "-blocking", "0");
    Tcl_SetChannelOption(NULL, chan, "-buffering", "line");
    if (srv->tlsArgs != NULL) {
        Tcl_Preserve(interp);
        if (ImportTls(srv, sock) != TCL_OK) {
            Tcl_BackgroundException(interp, TCL_ERROR);
            Tcl_ResetResult(interp);
            Tcl_UnregisterChannel(interp, chan);
            Tcl_Release(interp);
            return;
        }
        Tcl_Release(interp);
    }
    if (!srv->quiet) {
        Tcl_Channel err = Tcl_GetStdChannel(TCL_STDERR);
        if (err != NULL) {
            Tcl_Obj *msg = Tcl_ObjPrintf("connect on %s (from %s:%d)\n", sock,
                    host, port);
            Tcl_IncrRefCount(msg);
            Tcl_WriteObj(err, msg);
            Tcl_Flush(err);
            Tcl_DecrRefCount(msg);
        }
    }
    objv[0] = Tcl_NewStringObj("::coroutine", -1);
    objv[1] = ClientName(interp, host, port);
    objv[2] = Tcl_NewStringObj("::weft::_conn", -1);
    objv[3] = srv->handler;
    objv[4] = Tcl_NewStringObj(sock, -1);
    objv[5] = Tcl_NewIntObj(srv->quiet);
    for (i = 0; i < 6; i++) {
        Tcl_IncrRefCount(objv[i]);
    }
    Tcl_Preserve(interp);
    code = Tcl_EvalObjv(interp, 6, objv, TCL_EVAL_GLOBAL);
    if (code == TCL_ERROR) {
        Tcl_BackgroundException(interp, code);
    }
    Tcl_ResetResult(interp);
    Tcl_Release(interp);
    for (i = 0; i < 6; i++) {
        Tcl_DecrRefCount(objv[i]);
    }
}

static int
ServeCmd(ClientData cd, Tcl_Interp *interp, int objc, Tcl_Obj *const objv[])
{
    WeftInterp *wi = (WeftInterp *) cd;
    const char *host = NULL;
    Tcl_Obj *certfile = NULL, *keyfile = NULL, *tlsArgs = NULL;
    int quiet = 0, port, i;
    Server *srv;
    Tcl_Channel listen;

    for (i = 1; i < objc - 2; i++) {
        const char *opt = Tcl_GetString(objv[i]);
        if (strcmp(opt, "-quiet") == 0) {
            quiet = 1;
        } else if (strcmp(opt, "-host") == 0 && i + 1 < objc - 2) {
            host = Tcl_GetString(objv[++i]);
        } else if (strcmp(opt, "-certfile") == 0 && i + 1 < objc - 2) {
            certfile = objv[++i];
        } else if (strcmp(opt, "-keyfile") == 0 && i + 1 < objc - 2) {
            keyfile = objv[++i];
        } else {
            goto usage;
        }
    }
    if (objc < 3 || i != objc - 2) {
    usage:
        Tcl_WrongNumArgs(interp, 1, objv, "?-host addr? ?-quiet? "
                "?-certfile file -keyfile file? port handler");
        return TCL_ERROR;
    }
    if (Tcl_GetIntFromObj(interp, objv[objc - 2], &port) != TCL_OK) {
        return TCL_ERROR;
    }
    if (port < 0 || port > 65535) {
        return Weft_Error(interp, "PORT", "port out of range: %d", port);
    }
    if ((certfile == NULL) != (keyfile == NULL)) {
        return Weft_Error(interp, "TLS", "-certfile and -keyfile go together");
    }
    if (certfile != NULL) {
        Tcl_Obj *files[2] = {certfile, keyfile};
        int k;
        if (Tcl_PkgRequire(interp, "tls", NULL, 0) == NULL) {
            return Weft_Error(interp, "TLS", "weft::serve -certfile needs the tls "
                    "package (Debian: tcl-tls): %s", Tcl_GetStringResult(interp));
        }
        for (k = 0; k < 2; k++) { /* (tls::import reads them for each connection) */
            if (Tcl_FSAccess(files[k], R_OK) != 0) {
                return Weft_Error(interp, "TLS", "cannot read \"%s\": %s",
                        Tcl_GetString(files[k]), Tcl_PosixError(interp));
            }
        }
        tlsArgs = Tcl_NewListObj(0, NULL);
        Tcl_ListObjAppendElement(NULL, tlsArgs, Tcl_NewStringObj("-server", -1));
        Tcl_ListObjAppendElement(NULL, tlsArgs, Tcl_NewIntObj(1));
        Tcl_ListObjAppendElement(NULL, tlsArgs, Tcl_NewStringObj("-certfile", -1));
        Tcl_ListObjAppendElement(NULL, tlsArgs, certfile);
        Tcl_ListObjAppendElement(NULL, tlsArgs, Tcl_NewStringObj("-keyfile", -1));
        Tcl_ListObjAppendElement(NULL, tlsArgs, keyfile);
        Tcl_IncrRefCount(tlsArgs);
    }
    srv = (Server *) ckalloc(sizeof(Server));
    srv->wi = wi;
    srv->interp = interp;
    srv->handler = objv[objc - 1];
    Tcl_IncrRefCount(srv->handler);
    srv->tlsArgs = tlsArgs;
    srv->quiet = quiet;
    Tcl_Preserve(wi);
    listen = Tcl_OpenTcpServer(interp, port, host, Accept, srv);
    if (listen == NULL) {
        FreeServer(srv);
        return TCL_ERROR;
    }
    Tcl_RegisterChannel(interp, listen);
    Tcl_CreateCloseHandler(listen, FreeServer, srv);
    Tcl_SetObjResult(interp, Tcl_NewStringObj(Tcl_GetChannelName(listen), -1));
    return TCL_OK;
}

int
Weft_RegisterServeCommands(Tcl_Interp *interp, WeftInterp *wi)
{
    Tcl_CreateObjCommand(interp, "::weft::serve", ServeCmd, wi, NULL);
    return TCL_OK;
}
