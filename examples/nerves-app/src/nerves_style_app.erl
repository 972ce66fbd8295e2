%% A stand-in for a user's Nerves application, for imgtool's tests: an OTP application that
%% holds some state (an ETS table of a few MiB) as a real one does, reads the device's serial
%% number the way Nerves.Runtime does (the U-Boot env, through fw_printenv), and prints one line
%% when it is up. Nothing of imgtool runs inside it. A second process does what a Nerves
%% application does to take its identity after a restore from an imgtool template: it waits for
%% /run/imgtool/identity to appear or change, then reads the serial again from the env.
-module(nerves_style_app).
-behaviour(application).
-behaviour(supervisor).

-export([start/2, stop/1, init/1, start_state/0, state_loop/1, start_identity/0,
         identity_loop/1]).

-define(ETS_ROWS, 16384).   % 16384 rows of 256-byte binaries: about 4 MiB
%% imgtool's helper writes this file (atomically, by rename) after it has written the clone's
%% nerves_serial_number into the U-Boot env.
-define(IDENTITY_FILE, "/run/imgtool/identity").
-define(IDENTITY_POLL_MS, 200).

start(_Type, _Args) ->
    supervisor:start_link({local, ?MODULE}, ?MODULE, []).

stop(_State) ->
    ok.

init([]) ->
    Children = [#{id => state, start => {?MODULE, start_state, []}},
                #{id => identity, start => {?MODULE, start_identity, []}}],
    {ok, {#{strategy => one_for_one}, Children}}.

start_state() ->
    Pid = proc_lib:spawn_link(fun() ->
        Tab = ets:new(app_state, [named_table, public, set]),
        [ets:insert(Tab, {N, binary:copy(<<N:32>>, 64)}) || N <- lists:seq(1, ?ETS_ROWS)],
        {ok, Vsn} = application:get_key(nerves_style_app, vsn),
        %% The shell's prompt shares the console and may come first: start a fresh line, so
        %% the ready line is always a line of its own.
        io:format("~nNERVES-STYLE-APP-UP v~s serial=~s ets_bytes=~b~n",
                  [Vsn, serial(), ets:info(Tab, memory) * erlang:system_info(wordsize)
                                  + ?ETS_ROWS * 256]),
        state_loop(Tab)
    end),
    {ok, Pid}.

state_loop(Tab) ->
    receive
        {From, count} -> From ! {self(), ets:info(Tab, size)}, state_loop(Tab);
        _ -> state_loop(Tab)
    end.

start_identity() ->
    Pid = proc_lib:spawn_link(fun() -> identity_loop(identity_file()) end),
    {ok, Pid}.

%% A poll, not inotify: nothing to install, and one small read of a tmpfs file every 200 ms is
%% cheap. A file that appears or changes means a new identity: the env is already updated.
identity_loop(Last) ->
    timer:sleep(?IDENTITY_POLL_MS),
    case identity_file() of
        Last -> identity_loop(Last);
        none -> identity_loop(none);
        Now ->
            io:format("~nNERVES-STYLE-APP-IDENTITY serial=~s~n", [serial()]),
            identity_loop(Now)
    end.

identity_file() ->
    case file:read_file(?IDENTITY_FILE) of
        {ok, Bin} -> Bin;
        {error, _} -> none
    end.

%% `fw_printenv -n nerves_serial_number`, as Nerves.Runtime's KV reads it from the env.
serial() ->
    Exe = "/usr/bin/fw_printenv",
    case filelib:is_regular(Exe) of
        false -> "none";
        true ->
            Port = open_port({spawn_executable, Exe},
                             [{args, ["-n", "nerves_serial_number"]}, exit_status,
                              stderr_to_stdout, binary]),
            case collect(Port, <<>>) of
                {0, Out} -> string:trim(binary_to_list(Out));
                {_, _} -> "none"
            end
    end.

collect(Port, Acc) ->
    receive
        {Port, {data, D}} -> collect(Port, <<Acc/binary, D/binary>>);
        {Port, {exit_status, S}} -> {S, Acc}
    after 10000 -> {timeout, Acc}
    end.
