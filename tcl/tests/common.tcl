# Helpers shared by the weft Tcl tests.  Everything is loopback-only and every
# wait is bounded (an error is raised when a bound is reached).
package require tcltest 2
namespace import ::tcltest::*
tcltest::configure {*}$argv
package require weft

set ::testsDir [file dirname [file normalize [info script]]]
set ::examplesDir [file normalize [file join $::testsDir .. .. examples tcl]]
set ::buildDir $::env(WEFT_TCL_BUILD)

# Run the event loop until the expression is true, at most ms milliseconds.
proc waitfor {cond {ms 10000}} {
    set deadline [expr {[clock milliseconds] + $ms}]
    while {![uplevel #0 [list expr $cond]]} {
        if {[clock milliseconds] > $deadline} {
            error "timed out waiting for: $cond"
        }
        set id [after 2 {set ::_tick 1}]
        vwait ::_tick
        after cancel $id
    }
}

# Let the event loop run for a while (for "nothing happens" checks).
proc spin {ms} {
    set id [after $ms {set ::_spun 1}]
    vwait ::_spun
}

# A connected loopback TCP pair: {server-side client-side}.
proc pair {} {
    set ::_acc {}
    set l [socket -server {apply {{s h p} {set ::_acc $s}}} -myaddr 127.0.0.1 0]
    set c [socket 127.0.0.1 [lindex [chan configure $l -sockname] 2]]
    waitfor {$::_acc ne ""}
    close $l
    chan configure $c -buffering none -translation binary
    chan configure $::_acc -translation binary
    return [list $::_acc $c]
}

proc stats {} { dict remove [weft::stats] notifier channels }
# No call suspended and no wake-up source armed for one.
proc clean {} {
    set s [weft::stats]
    expr {[dict get $s waits] == 0 && [dict get $s armed] == 0}
}
# ... and no channel handler registered at all.
proc bare {} {
    expr {[clean] && [dict get [weft::stats] handlers] == 0}
}

# Background errors are collected, not printed.
set ::bgerrors {}
interp bgerror {} {apply {{msg opts} {lappend ::bgerrors $msg}}}

# Start an example (or any script) in a child tclsh; returns {pid port chan}.
# The script must print "listening on 127.0.0.1:PORT".
proc startServer {script args} {
    set tclsh [info nameofexecutable]
    set f [open |[list $tclsh $script {*}$args 2>@1] r]
    chan configure $f -blocking 1
    set deadline [expr {[clock seconds] + 20}]
    while {[gets $f line] >= 0} {
        if {[regexp {^listening on 127\.0\.0\.1:(\d+)$} $line -> port]} {
            chan configure $f -blocking 0
            chan event $f readable [list apply {{f} {
                if {[gets $f l] >= 0} { lappend ::serverOutput($f) $l }
                if {[eof $f]} { chan event $f readable {}; set ::serverEof($f) 1 }
            }} $f]
            return [list [pid $f] $port $f]
        }
        if {[clock seconds] > $deadline} break
    }
    error "server $script did not start"
}

proc stopServer {srv} {
    lassign $srv pid port f
    catch {exec kill $pid}
    catch {chan configure $f -blocking 1}
    catch {close $f}
}

# Run the C load generator against a port; returns its "ok ..." line.
proc loadgen {port args} {
    exec [file join $::buildDir loadgen] -p $port {*}$args 2>@1
}

# Start each test from a clean slate of the globals the tests use.
proc fresh {} {
    foreach v {r r2 a b done woke log n line} { unset -nocomplain ::$v }
    array unset ::serverOutput
    array unset ::serverEof
    set ::bgerrors {}
}

# Read exactly n bytes from chan while running the event loop (bounded).
proc drain {chan n {secs 60}} {
    chan configure $chan -blocking 0
    set data {}
    set deadline [expr {[clock seconds] + $secs}]
    while {[string length $data] < $n} {
        if {[clock seconds] > $deadline} {
            error "drain: timed out after [string length $data] of $n bytes"
        }
        set d [read $chan [expr {$n - [string length $data]}]]
        if {$d eq ""} { spin 1 } else { append data $d }
    }
    return $data
}

# Run a Tcl script in a child tclsh (bounded by `timeout`); returns its output
# (stdout and stderr), or "exit N: output" when it did not exit with 0.
proc child {script {secs 20}} {
    set fd [file tempfile f weftchild.tcl]
    puts $fd "lappend auto_path [list $::buildDir]"
    puts $fd $script
    close $fd
    set rc [catch {exec timeout -k 2 $secs [info nameofexecutable] $f 2>@1} out opts]
    file delete $f
    if {$rc} {
        set ec [dict get $opts -errorcode]
        if {[lindex $ec 0] eq "CHILDSTATUS"} { return "exit [lindex $ec 2]: $out" }
    }
    return $out
}

# A peer in a child process that counts the bytes of one connection and
# prints the count when it reaches end of file.  Returns {pid port chan}.
proc startSink {} {
    set fd [file tempfile script weftsink.tcl]
    puts $fd {
        set l [socket -server {apply {{s h p} {
            chan configure $s -translation binary -blocking 0
            set ::n 0
            chan event $s readable [list apply {{s} {
                incr ::n [string length [read $s]]
                if {[eof $s]} { puts "got $::n"; flush stdout; exit }
            }} $s]
        }}} -myaddr 127.0.0.1 0]
        puts "listening on 127.0.0.1:[lindex [chan configure $l -sockname] 2]"
        flush stdout
        after 60000 exit
        vwait forever
    }
    close $fd
    set srv [startServer $script]
    file delete $script
    return $srv
}

# One line from chan, running the event loop meanwhile (bounded).
proc getline {chan {ms 10000}} {
    chan configure $chan -blocking 0
    set ::_line {}
    set ::_got 0
    chan event $chan readable [list apply {{chan} {
        if {[gets $chan l] >= 0} { set ::_line $l; set ::_got 1 } elseif {[eof $chan]} { set ::_got 1 }
    }} $chan]
    waitfor {$::_got} $ms
    chan event $chan readable {}
    return $::_line
}
