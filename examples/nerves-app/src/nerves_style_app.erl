%% A stand-in for a user's Nerves application, for imgtool's tests: an OTP application that
%% holds some state (an ETS table of a few MiB) as a real one does, reads the device's serial
%% number the way Nerves.Runtime does (the U-Boot env, through fw_printenv), and prints one line
%% when it is up. Nothing of imgtool runs inside it.
-module(nerves_style_app).
-behaviour(application).
-behaviour(supervisor).

-export([start/2, stop/1, init/1, start_state/0, state_loop/1]).

-define(ETS_ROWS, 16384).   % 16384 rows of 256-byte binaries: about 4 MiB

start(_Type, _Args) ->
    supervisor:start_link({local, ?MODULE}, ?MODULE, []).

stop(_State) ->
    ok.

init([]) ->
    Child = #{id => state, start => {?MODULE, start_state, []}},
    {ok, {#{strategy => one_for_one}, [Child]}}.

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
