function answer = itloop_post_events(server, token, batch_id, events, spool_file, complete)
% ITLOOP_POST_EVENTS  After the session: post the presentation events, retrying until the server answers.
%   events: struct array with fields event_id, seq, image_sha256, onset_s, fixation_ok
%   (event_id = sprintf('%s:%d', batch_id, seq); onset_s = seconds on the session clock, from the
%   flip timestamp). The events are first written to spool_file (NDJSON) so nothing is lost if
%   the network is down: post that file again later. The server is idempotent by event_id, so
%   posting twice is harmless. complete=true also marks the batch done (only when every
%   presentation was shown). Returns the summed {received, new, repeated}.
fid = fopen(spool_file, 'w');
for k = 1:numel(events)
    fprintf(fid, '%s\n', jsonencode(events(k)));
end
fclose(fid);
opts = weboptions('HeaderFields', {'Authorization', ['Bearer ' token]}, 'Timeout', 60, ...
                  'MediaType', 'application/json', 'ContentType', 'json');
url = sprintf('%s/api/v1/batches/%s/presentations', server, batch_id);
answer = struct('received', 0, 'new', 0, 'repeated', 0);
chunk = 1000; delay = 1;
for s = 1:chunk:numel(events)
    part = events(s:min(s + chunk - 1, numel(events)));
    while true
        try
            a = webwrite(url, part, opts);
            break
        catch err
            if contains(err.message, {'422', '409', '403', '401'})
                error('itloop:post', 'the server refused events %d-%d: %s', s, s + numel(part) - 1, err.message);
            end
            fprintf('itloop: posting failed (%s); retrying in %d s\n', err.message, delay);
            pause(delay); delay = min(2 * delay, 60);
        end
    end
    answer.received = answer.received + a.received;
    answer.new = answer.new + a.new;
    answer.repeated = answer.repeated + a.repeated;
end
if complete
    webwrite(sprintf('%s/api/v1/batches/%s/complete', server, batch_id), struct(), opts);
end
end
